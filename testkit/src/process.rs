//! Child processes the tests start: killed and reaped on drop, signalled, waited for on a port.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// CPU time (user + system) of the calling thread (`libc::RUSAGE_THREAD`) or of the whole
/// process, all threads (`libc::RUSAGE_SELF`), for the harnesses that measure CPU per record.
pub fn cpu_time(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the struct it is given; `who` is one of the values above.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard {
    pub name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child }
    }

    /// Spawns `cmd` whose stdout and stderr the caller has set already.
    pub fn spawn_with_output(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child }
    }

    pub fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} exited ({status}):\n{text}", self.name);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on 127.0.0.1:`port`; panics with `log` if the child of
/// `guard` exits first or nothing listens after `timeout`.
pub fn wait_port(port: u16, guard: &mut ChildGuard, log: &Path, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        guard.assert_running(log);
        if start.elapsed() >= timeout {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "{} not listening on {port} after {timeout:?}; its log:\n{text}",
                guard.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl ChildGuard {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) and waits up to `timeout` for the child to exit;
    /// kills it if it did not. Returns whether it exited by itself.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> bool {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// Whether the child has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}
