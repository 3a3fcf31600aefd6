//! Starts `authsync node --config FILE` processes and stops them: the one launcher that
//! `authsync demo` and `authsync bench` (through [`LocalCluster`]), the chaos harness
//! and the integration tests share.
//!
//! A node prints one line on stdout once it listens,
//! `authsync node region=R listening on http(s)://ADDR` ([`run_node`]); a launch can
//! wait for it and keep the URL. Its log (stderr) is inherited or appended to a file.
//!
//! [`LocalCluster`]: crate::node::local_cluster::LocalCluster
//! [`run_node`]: crate::node::process::run_node

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How often [`NodeProcess::wait`] looks whether the process has exited.
const POLL: Duration = Duration::from_millis(50);

/// How long a dropped [`NodeProcess`] has to stop after SIGTERM before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// What to run and how: `EXE node --config CONFIG`.
///
/// By default stderr is inherited, the node outlives the thread that started it, and
/// [`NodeCommand::spawn`] returns once the node prints its URL (60 s at most).
#[derive(Debug, Clone)]
pub struct NodeCommand {
    exe: PathBuf,
    config: PathBuf,
    name: String,
    stderr_log: Option<PathBuf>,
    die_with_parent: bool,
    wait_for_url: Option<Duration>,
}

impl NodeCommand {
    /// `exe node --config config`: `exe` is a binary with the `node` command (`authsync`,
    /// or the chaos harness, which runs nodes from its own binary).
    pub fn new(exe: impl Into<PathBuf>, config: impl Into<PathBuf>) -> NodeCommand {
        let config = config.into();
        NodeCommand {
            exe: exe.into(),
            name: config.display().to_string(),
            config,
            stderr_log: None,
            die_with_parent: false,
            wait_for_url: Some(Duration::from_secs(60)),
        }
    }

    /// Runs the executable of this process (for `authsync demo` and `authsync bench`).
    pub fn current_exe(config: impl Into<PathBuf>) -> anyhow::Result<NodeCommand> {
        let exe = std::env::current_exe().context("find the authsync executable")?;
        Ok(NodeCommand::new(exe, config))
    }

    /// What errors and warnings call the node: its region (the config path if unset).
    pub fn name(mut self, name: impl Into<String>) -> NodeCommand {
        self.name = name.into();
        self
    }

    /// Appends the node's stderr (its log) to `path`, created if missing, instead of
    /// inheriting this process's.
    pub fn stderr_log(mut self, path: impl Into<PathBuf>) -> NodeCommand {
        self.stderr_log = Some(path.into());
        self
    }

    /// With `true`, the kernel sends the node SIGTERM when the *thread* that spawned it
    /// exits (`PR_SET_PDEATHSIG`): a node started from a short-lived thread would die
    /// with it, so spawn from one that lives as long as the node should.
    pub fn die_with_parent(mut self, yes: bool) -> NodeCommand {
        self.die_with_parent = yes;
        self
    }

    /// `Some(within)`: stdout is piped and [`NodeCommand::spawn`] returns once the node
    /// prints its URL, failing if it does not within `within` or exits first. `None`:
    /// stdout goes nowhere and spawning returns at once (the caller checks readiness).
    pub fn wait_for_url(mut self, within: Option<Duration>) -> NodeCommand {
        self.wait_for_url = within;
        self
    }

    /// Starts the node with [`Command::spawn`].
    pub fn spawn(&self) -> anyhow::Result<NodeProcess> {
        self.spawn_with(Command::spawn)
    }

    /// Starts the node with `spawn`, which gets the prepared command to change further
    /// and start (inside a network namespace, say).
    pub fn spawn_with(
        &self,
        spawn: impl FnOnce(&mut Command) -> std::io::Result<Child>,
    ) -> anyhow::Result<NodeProcess> {
        let name = &self.name;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["node", "--config"]).arg(&self.config);
        cmd.stdout(match self.wait_for_url {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        });
        if let Some(path) = &self.stderr_log {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open the log of node {name}, {}", path.display()))?;
            cmd.stderr(log);
        }
        if self.die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: the hook runs in the forked child before `exec`; prctl is
            // async-signal-safe, and building an `io::Error` from errno does not
            // allocate.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = spawn(&mut cmd).with_context(|| {
            format!(
                "start node {name} ({} node --config {})",
                self.exe.display(),
                self.config.display()
            )
        })?;
        let mut node = NodeProcess {
            name: name.clone(),
            child,
            url: None,
            exited: None,
            terminated: false,
        };
        if let Some(within) = self.wait_for_url {
            match node.read_url(within) {
                Ok(url) => node.url = Some(url),
                Err(e) => {
                    node.kill();
                    let log = match &self.stderr_log {
                        Some(path) => format!("see its log in {}", path.display()),
                        None => "see its log above".to_string(),
                    };
                    return Err(e.context(format!("node {name} did not start ({log})")));
                }
            }
        }
        Ok(node)
    }
}

/// A running (or exited, not yet dropped) node process. Dropping it stops the node:
/// SIGTERM, then SIGKILL if it has not exited within 10 s.
#[derive(Debug)]
pub struct NodeProcess {
    name: String,
    child: Child,
    url: Option<String>,
    /// Set once the process has been reaped: its pid may belong to another by then.
    exited: Option<ExitStatus>,
    terminated: bool,
}

impl NodeProcess {
    /// Waits for the `listening on URL` line; a thread keeps draining stdout after it,
    /// so the node never blocks on a full pipe.
    fn read_url(&mut self, within: Duration) -> anyhow::Result<String> {
        let stdout = self.child.stdout.take().context("take the node's stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{}-stdout", self.name))
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(url) = line.split("listening on ").nth(1) {
                        let _ = tx.send(url.trim().to_string());
                    }
                }
            })
            .context("start a thread to read the node's stdout")?;
        match rx.recv_timeout(within) {
            Ok(url) => Ok(url),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("no `listening on` line within {within:?}")
            }
            // Stdout closed: the node is exiting; give it a moment to be reaped.
            Err(mpsc::RecvTimeoutError::Disconnected) => match self.wait(Duration::from_secs(1)) {
                Some(status) => bail!("exited with {status} before it listened"),
                None => bail!("closed its stdout before it listened"),
            },
        }
    }

    /// The URL the node printed; `None` unless it was launched waiting for it.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM, …); nothing once it has exited.
    pub fn signal(&mut self, signal: libc::c_int) -> anyhow::Result<()> {
        if self.try_exited().is_some() {
            return Ok(());
        }
        if signal == libc::SIGTERM {
            self.terminated = true;
        }
        // SAFETY: signalling a child this process started and has not reaped (checked
        // just above), so the pid is still its.
        if unsafe { libc::kill(self.child.id() as libc::pid_t, signal) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("send signal {signal} to node {}", self.name));
        }
        Ok(())
    }

    /// SIGTERM: the node's orderly shutdown begins.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// SIGKILL (no shutdown path runs), then reaps it; its exit status.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_exited().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
        self.exited
    }

    /// Waits up to `within` for the node to exit; its status, `None` if it still runs.
    pub fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Stops the node as SIGTERM does (sent unless it was already) and waits up to
    /// `within`; kills it if it takes longer. Its status if it stopped in time, `None`
    /// if it had to be killed.
    pub fn stop(&mut self, within: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_exited() {
            return Some(status);
        }
        if !self.terminated {
            if let Err(e) = self.terminate() {
                tracing::warn!(region = self.name.as_str(), error = %e, "SIGTERM failed");
            }
        }
        match self.wait(within) {
            Some(status) => Some(status),
            None => {
                tracing::warn!(
                    region = self.name.as_str(),
                    "node did not stop in time; killing it"
                );
                self.kill();
                None
            }
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop(DROP_GRACE);
    }
}
