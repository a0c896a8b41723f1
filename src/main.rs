//! The `appliance` binary: everything lives in the library; see `cli`.

fn main() {
    // Like any Unix tool, end quietly when a reader such as `head` closes our
    // output, instead of panicking on the failed write.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(appliance::cli::main());
}
