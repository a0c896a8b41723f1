//! SIGINT and SIGTERM (and, for commands that own containers, SIGPIPE),
//! listened for from the moment of construction.
//!
//! Owns: installing the listeners, telling a SIGPIPE from a closed stdout
//! or stderr apart from one raised by a socket, and mapping a signal to
//! its exit code. Does not own what a command does when one arrives (the
//! sandbox's signal reaper, `serve`'s graceful shutdown).
//!
//! Why construction and not first poll: tokio's `ctrl_c()` and a spawned
//! task calling `signal()` install their handlers only when polled. On a
//! loaded machine that poll can come after the command has started work
//! (a container, a listening socket), and a signal in between takes the
//! default action: the process dies without cleaning up.
//!
//! Why SIGPIPE: `main` gives it the default action, so that `appliance …
//! | head` ends quietly like any Unix tool. For a command that owns
//! containers that default is a leak: the process dies at its first write
//! after the reader has gone, and nothing removes its containers. Listening
//! for it turns that death into the same clean shutdown as SIGTERM.

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    /// SIGPIPE with stdout or stderr closed by its reader.
    BrokenOutput,
}

impl Signal {
    /// The shell's exit code for death by this signal: 130, 143 or 141.
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
            Signal::BrokenOutput => 141,
        }
    }
}

/// SIGINT and SIGTERM listeners (Ctrl-C only where there is no SIGTERM),
/// and optionally a SIGPIPE listener.
pub struct Signals {
    #[cfg(unix)]
    listeners: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    #[cfg(unix)]
    pipe: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Install the SIGINT and SIGTERM listeners now. Must be called inside
    /// a tokio runtime with its I/O driver enabled.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listeners = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(int), Ok(term)) => Some((int, term)),
                (a, b) => {
                    let e = a.err().or(b.err()).map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!("cannot listen for SIGINT/SIGTERM ({e}); listening for Ctrl-C only");
                    None
                }
            };
            Signals { listeners, pipe: None }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// `install`, plus a SIGPIPE listener: from now on a write to a closed
    /// pipe fails with EPIPE instead of killing the process, and `recv`
    /// returns `BrokenOutput` once stdout or stderr is such a pipe.
    pub fn install_with_broken_output() -> Self {
        #[allow(unused_mut)]
        let mut s = Self::install();
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe()) {
            Ok(p) => s.pipe = Some(p),
            Err(e) => tracing::warn!("cannot listen for SIGPIPE ({e}); a closed output pipe ends the process uncleanly"),
        }
        s
    }

    /// Wait for the first signal. A SIGPIPE counts only when stdout or
    /// stderr is closed: one raised by a write to a socket (the Docker
    /// Engine's, say) is that write's EPIPE error, for its caller to handle.
    pub async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.listeners {
            let pipe = &mut self.pipe;
            let broken_output = async {
                match pipe {
                    Some(p) => loop {
                        if p.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                        if output_is_closed() {
                            return;
                        }
                    },
                    None => std::future::pending::<()>().await,
                }
            };
            return tokio::select! {
                _ = int.recv() => Signal::Interrupt,
                _ = term.recv() => Signal::Terminate,
                _ = broken_output => Signal::BrokenOutput,
            };
        }
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
        Signal::Interrupt
    }
}

/// Whether stdout or stderr is a pipe or socket whose reader has gone.
#[cfg(unix)]
fn output_is_closed() -> bool {
    closed_for_writing(1) || closed_for_writing(2)
}

/// Whether `fd` is the write end of a pipe with no reader left, or a socket
/// closed by its peer. Linux's poll reports POLLERR on the first and POLLERR
/// or POLLHUP on the second; a file or a terminal reports neither.
#[cfg(unix)]
fn closed_for_writing(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
    // SAFETY: one valid pollfd and a zero timeout: poll only reads the fd's state.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sent_right_after_install_is_received() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut s = Signals::install();
            // sent before the first poll: it must not take the default action
            unsafe {
                libc::raise(libc::SIGTERM);
            }
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), s.recv()).await.expect("the signal arrives");
            assert_eq!(got, Signal::Terminate);
            assert_eq!(got.exit_code(), 143);
        });
    }

    #[test]
    fn a_pipe_counts_as_closed_only_once_its_reader_has_gone() {
        use std::os::fd::AsRawFd;
        let (reader, writer) = std::io::pipe().unwrap();
        assert!(!closed_for_writing(writer.as_raw_fd()), "a pipe with its reader open");
        drop(reader);
        assert!(closed_for_writing(writer.as_raw_fd()), "a pipe whose reader has gone");
        let file = tempfile::tempfile().unwrap();
        assert!(!closed_for_writing(file.as_raw_fd()), "a file");
    }

    #[test]
    fn a_closed_socket_counts_as_closed() {
        use std::os::fd::AsRawFd;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!closed_for_writing(a.as_raw_fd()));
        drop(b);
        assert!(closed_for_writing(a.as_raw_fd()));
    }
}
