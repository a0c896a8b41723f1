//! SIGINT and SIGTERM, listened for from the moment of construction.
//!
//! Owns: installing the listeners and mapping a signal to its exit code.
//! Does not own what a command does when one arrives (the sandbox's signal
//! reaper, `serve`'s graceful shutdown).
//!
//! Why construction and not first poll: tokio's `ctrl_c()` and a spawned
//! task calling `signal()` install their handlers only when polled. On a
//! loaded machine that poll can come after the command has started work
//! (a container, a listening socket), and a signal in between takes the
//! default action: the process dies without cleaning up.

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    /// The shell's exit code for death by this signal: 130 or 143.
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// SIGINT and SIGTERM listeners (Ctrl-C only where there is no SIGTERM).
pub struct Signals {
    #[cfg(unix)]
    listeners: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Install the listeners now. Must be called inside a tokio runtime
    /// with its I/O driver enabled.
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
            Signals { listeners }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Wait for the first signal.
    pub async fn recv(self) -> Signal {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = self.listeners {
            return tokio::select! {
                _ = int.recv() => Signal::Interrupt,
                _ = term.recv() => Signal::Terminate,
            };
        }
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
        Signal::Interrupt
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sent_right_after_install_is_received() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let s = Signals::install();
            // sent before the first poll: it must not take the default action
            unsafe {
                libc::raise(libc::SIGTERM);
            }
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), s.recv()).await.expect("the signal arrives");
            assert_eq!(got, Signal::Terminate);
            assert_eq!(got.exit_code(), 143);
        });
    }
}
