//! One long-lived thread forks every VMM and virtiofsd.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! not the process. Forking from whatever thread runs the boot (a tokio
//! worker, or a blocking-pool thread that retires after 10 s idle) would
//! SIGKILL a healthy VM the day that thread goes. This thread never exits
//! while the process runs, so the death signal means "the shim died".

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = (Command, mpsc::Sender<io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();

/// `cmd.spawn()`, done on the spawner thread.
pub fn spawn(cmd: Command) -> io::Result<Child> {
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("scute-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(tx)
    });
    let (reply, result) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child armed with PDEATHSIG from a short-lived thread's call still
    /// lives after that thread ends.
    #[test]
    fn children_outlive_the_thread_that_asked() {
        let child = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("30");
            // SAFETY: prctl only.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            spawn(cmd).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut child = child;
        assert!(
            child.try_wait().unwrap().is_none(),
            "killed with its thread"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
