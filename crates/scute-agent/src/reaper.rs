//! Child reaping for PID 1, coordinated with libcontainer.
//!
//! As init, the agent inherits every orphan and must reap it. libcontainer
//! waits for its own intermediate processes with `waitpid(pid)`, so a blanket
//! `waitpid(-1)` running concurrently could steal them. [`SPAWN_LOCK`] is held
//! while libcontainer creates or starts processes and while reaping, and a new
//! process's waiter is registered before that lock is released, so no exit is
//! lost and none is stolen.

use std::collections::HashMap;
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use scute_protocol::ExitStatus;
use tokio::sync::oneshot;

/// Held while processes are spawned by libcontainer and while reaping.
pub static SPAWN_LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone)]
pub struct Reaper {
    waiters: Arc<Mutex<HashMap<i32, oneshot::Sender<ExitStatus>>>>,
}

impl Reaper {
    /// Starts the reaping thread, woken by SIGCHLD (and every second anyway).
    pub fn start() -> Self {
        let reaper = Self {
            waiters: Arc::default(),
        };
        let (wake_tx, wake_rx) = std_mpsc::channel::<()>();
        tokio::spawn(async move {
            let Ok(mut sig) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            else {
                tracing::error!("cannot watch SIGCHLD; reaping every second");
                return;
            };
            while sig.recv().await.is_some() {
                if wake_tx.send(()).is_err() {
                    break;
                }
            }
        });
        let r = reaper.clone();
        std::thread::spawn(move || loop {
            let _ = wake_rx.recv_timeout(Duration::from_secs(1));
            r.reap_all();
        });
        reaper
    }

    /// Registers interest in `pid`'s exit. Call with [`SPAWN_LOCK`] held, right
    /// after the process was created.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(pid, tx);
        rx
    }

    fn reap_all(&self) {
        let _spawn = SPAWN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(tx) = self.waiters.lock().unwrap().remove(&status.0.as_raw()) {
                let _ = tx.send(status.1);
            }
        }
    }
}
