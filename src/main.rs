//! The `appliance` binary: everything lives in the library; see `cli`.

fn main() {
    std::process::exit(appliance::cli::main());
}
