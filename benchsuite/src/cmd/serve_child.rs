//! `malt serve` as a child process on a free loopback port, for the benchmarks that measure it
//! from a second process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// The running server; killed when dropped, however the benchmark ends.
pub struct ServeChild(Child);

impl ServeChild {
    /// Takes ownership of a started server process.
    pub fn new(child: Child) -> ServeChild {
        ServeChild(child)
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `malt serve ARGS --addr 127.0.0.1:0` and returns it with its base URL once it prints
/// `listening on URL` (the model may take a while to load: up to 600 s).
pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> anyhow::Result<(ServeChild, String)> {
    let exe = std::env::current_exe().context("locating the malt binary")?;
    let mut child = Command::new(exe)
        .args(["--log", "warn", "serve"])
        .args(args)
        .args(["--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `malt serve`")?;
    let stdout = child.stdout.take().context("`malt serve` stdout")?;
    let child = ServeChild(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading after the address so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let (false, Some(url)) = (sent, line.strip_prefix("listening on ")) {
                let _ = tx.send(url.trim().to_owned());
                sent = true;
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(600))
        .context("`malt serve` did not print `listening on ...` within 600 s")?;
    Ok((child, url))
}
