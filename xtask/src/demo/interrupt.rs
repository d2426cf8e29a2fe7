//! Ctrl-C (SIGINT), SIGTERM and SIGHUP for the demo: caught by handlers (tokio's, on a thread of
//! their own) instead of killing the process, so the demo can stop what it started and remove
//! what it made. Handlers, unlike a blocked signal mask, are not inherited by the programs the
//! demo starts: pgwarden and PostgreSQL still stop on SIGTERM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::thread;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

/// Whether a stop signal came, and a way to wait for one.
pub struct Interrupt {
    fired: Arc<AtomicBool>,
    signals: Receiver<&'static str>,
}

impl Interrupt {
    /// Installs the handlers (from here on the signals no longer kill the process) and starts
    /// the thread that reports them.
    pub fn install() -> Result<Interrupt> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("cannot build the signal thread's runtime")?;
        let (mut int, mut term, mut hup) = runtime
            .block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::hangup())?,
                ))
            })
            .context("cannot install handlers for SIGINT, SIGTERM, SIGHUP")?;
        let fired = Arc::new(AtomicBool::new(false));
        let (tx, signals) = channel();
        let flag = Arc::clone(&fired);
        thread::Builder::new()
            .name("demo-signals".into())
            .spawn(move || {
                runtime.block_on(async move {
                    loop {
                        let name = tokio::select! {
                            _ = int.recv() => "SIGINT",
                            _ = term.recv() => "SIGTERM",
                            _ = hup.recv() => "SIGHUP",
                        };
                        if flag.swap(true, Ordering::SeqCst) {
                            eprintln!("demo: {name}: still cleaning up, one moment");
                        } else {
                            eprintln!("\ndemo: {name}: stopping");
                            let _ = tx.send(name);
                        }
                    }
                });
            })
            .context("cannot start the signal thread")?;
        Ok(Interrupt { fired, signals })
    }

    /// Whether a stop signal came.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// The flag [`Interrupt::fired`] reads, for code that cannot borrow this (a panic hook).
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.fired)
    }

    /// Fails once a stop signal came: call it between steps.
    pub fn check(&self) -> Result<()> {
        if self.fired() {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Blocks until a stop signal comes (at once if one came already).
    pub fn wait(&self) {
        if !self.fired() {
            let _ = self.signals.recv();
        }
    }
}
