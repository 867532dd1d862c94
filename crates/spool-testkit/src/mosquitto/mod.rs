//! A real Mosquitto broker for end-to-end tests, started as a child process.
//!
//! [`Broker::start`] picks free ports on 127.0.0.1, writes a config into a fresh temporary
//! directory (plain TCP listener; optional TLS listener with CA, server certificate and key,
//! and `require_certificate` for mutual TLS; optional password file with anonymous access
//! refused; persistence on or off), starts `mosquitto -c` and returns once every listener
//! accepts connections. The broker's log is written to a file in that directory and is part
//! of every error, so a failing test shows what the broker saw.
//!
//! The broker can be killed (SIGKILL), stopped (SIGTERM, which also saves its persistence
//! file) and restarted on the same ports with the same persistence directory, so persistent
//! sessions and their queued messages survive a restart as they would in production. Dropping
//! the [`Broker`] kills the process and removes the directory.
//!
//! [`client`] runs the real `mosquitto_pub` and `mosquitto_sub` against it.
//!
//! Nothing here uses port 1883 or the system's Mosquitto service: every broker has its own
//! ports, config and directory, so tests run in parallel and next to an installed service.

pub mod client;

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::certs::CertFiles;
pub use client::{publish, register_subscription, subscribe_collect, ClientOptions, Subscriber};

/// How long a broker may take to open its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Broker::stop`] waits after SIGTERM before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the start-up wait looks at the ports and the process.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many times a fresh start picks new ports when another process took one meanwhile.
const PORT_ATTEMPTS: usize = 5;
/// The most of the broker's log that an error message quotes (its tail).
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// Where Debian and others put the broker and the clients when they are not on `PATH`
/// (`/usr/sbin` is not on a normal user's `PATH`).
const FALLBACK_DIRS: [&str; 4] = ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"];

/// What went wrong with the broker or a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "`{program}` was not found on PATH or in /usr/sbin, /usr/bin: the MQTT tests need a real \
         Mosquitto. Run scripts/test, which installs it, or install the Debian packages \
         yourself: apt-get install mosquitto mosquitto-clients"
    )]
    NotInstalled { program: &'static str },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(
        "mosquitto did not accept connections on port {port} within {waited:?}\n--- broker log \
         ({dir}) ---\n{log}"
    )]
    NotReady {
        port: u16,
        waited: Duration,
        dir: PathBuf,
        log: String,
    },
    #[error("mosquitto exited during start-up ({status})\n--- broker log ({dir}) ---\n{log}")]
    Exited {
        status: ExitStatus,
        dir: PathBuf,
        log: String,
    },
    #[error("`{command}` failed ({status}): {output}")]
    Client {
        command: String,
        status: ExitStatus,
        output: String,
    },
    #[error("{0}")]
    Timeout(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The path of `program`: on `PATH`, else in the usual system directories.
pub fn find_program(program: &'static str) -> Result<PathBuf, Error> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(Error::NotInstalled { program })
}

/// The TLS listener: PEM files, as made by [`crate::certs::Pki`].
#[derive(Clone, Debug)]
pub struct TlsListener {
    /// The CA that client certificates must be signed by (`cafile`).
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Mutual TLS: a client without a certificate signed by `ca_file` is refused.
    pub require_certificate: bool,
}

impl TlsListener {
    /// A listener presenting `server`, trusting client certificates signed by `ca` (checked
    /// only when `require_certificate`).
    pub fn from_certs(ca: &CertFiles, server: &CertFiles, require_certificate: bool) -> Self {
        TlsListener {
            ca_file: ca.cert.clone(),
            cert_file: server.cert.clone(),
            key_file: server.key.clone(),
            require_certificate,
        }
    }
}

/// How the broker is set up. `BrokerConfig::default()`: plain TCP only, anonymous access,
/// persistence on.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Keep sessions, subscriptions and queued messages in `mosquitto.db` across restarts.
    /// The database is saved after every change (`autosave_on_changes`, interval 1) and on
    /// SIGTERM; after a SIGKILL the broker keeps what it had saved.
    pub persistence: bool,
    /// A second listener on its own port, with TLS.
    pub tls: Option<TlsListener>,
    /// Users and passwords. When not empty, a password file is generated with
    /// `mosquitto_passwd` and anonymous clients are refused.
    pub users: Vec<(String, String)>,
    /// Lines appended to the generated config as they are (global options).
    pub extra_config: Vec<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            persistence: true,
            tls: None,
            users: Vec::new(),
            extra_config: Vec::new(),
        }
    }
}

impl BrokerConfig {
    #[must_use]
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }

    #[must_use]
    pub fn tls(mut self, tls: TlsListener) -> Self {
        self.tls = Some(tls);
        self
    }

    #[must_use]
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_string(), password.to_string()));
        self
    }

    #[must_use]
    pub fn extra(mut self, line: &str) -> Self {
        self.extra_config.push(line.to_string());
        self
    }
}

/// A running (or stopped) Mosquitto with its directory; killed when dropped.
pub struct Broker {
    config: BrokerConfig,
    program: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    tls_port: Option<u16>,
    child: Option<Child>,
    /// Length of `mosquitto.log` when the current process was started: what it logged since.
    log_start: usize,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("port", &self.port)
            .field("tls_port", &self.tls_port)
            .field("dir", &self.dir.path())
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Starts a broker on free ports and waits until every listener accepts connections.
    pub fn start(config: BrokerConfig) -> Result<Broker, Error> {
        let program = find_program("mosquitto")?;
        let dir = tempfile::Builder::new()
            .prefix("spool-mosquitto-")
            .tempdir()
            .map_err(io_error("creating the broker's temporary directory"))?;
        if !config.users.is_empty() {
            write_password_file(&dir.path().join("passwd"), &config.users)?;
        }
        let mut broker = Broker {
            config,
            program,
            dir,
            port: 0,
            tls_port: None,
            child: None,
            log_start: 0,
        };
        // A port found free can be taken by another process before the broker binds it:
        // then pick new ones.
        let mut attempt = 1;
        loop {
            broker.port = free_port()?;
            broker.tls_port = match broker.config.tls {
                Some(_) => Some(free_port()?),
                None => None,
            };
            match broker.spawn_and_wait(START_TIMEOUT) {
                Err(Error::Exited { .. }) if attempt < PORT_ATTEMPTS && broker.address_in_use() => {
                    attempt += 1;
                }
                other => return other.map(|()| broker),
            }
        }
    }

    /// The plain TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS port, if the broker has a TLS listener.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// 127.0.0.1 and the plain TCP port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Client options for the plain TCP listener.
    pub fn client(&self) -> ClientOptions {
        ClientOptions::new(self.port)
    }

    /// Client options for the TLS listener, trusting `ca_file`.
    ///
    /// # Panics
    /// If the broker has no TLS listener (a mistake in the test).
    pub fn tls_client(&self, ca_file: &Path) -> ClientOptions {
        let port = self
            .tls_port
            .expect("tls_client: this broker was started without a TLS listener");
        ClientOptions::new(port).tls(ca_file)
    }

    /// The broker's directory: config, log, persistence.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The tail of the broker's log (its log file and what it printed before opening it).
    pub fn log(&self) -> String {
        let mut log = String::new();
        for name in ["output.log", "mosquitto.log"] {
            if let Ok(bytes) = fs::read(self.dir().join(name)) {
                let tail = &bytes[bytes.len().saturating_sub(LOG_TAIL_BYTES)..];
                log.push_str(&String::from_utf8_lossy(tail));
            }
        }
        log
    }

    /// SIGKILL, as in a crash or power cut: the broker keeps only what it had saved.
    pub fn kill(&mut self) -> Result<(), Error> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().map_err(io_error("waiting for mosquitto"))?;
        }
        Ok(())
    }

    /// SIGTERM and wait (the broker saves its persistence file and closes every client);
    /// SIGKILL if it has not exited after 10 s.
    pub fn stop(&mut self) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = rustix::process::Pid::from_child(&child);
        if rustix::process::kill_process(pid, rustix::process::Signal::TERM).is_err() {
            // Already gone.
            child.wait().map_err(io_error("waiting for mosquitto"))?;
            return Ok(());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
                Ok(None) => {
                    let _ = child.kill();
                    child.wait().map_err(io_error("waiting for mosquitto"))?;
                    return Err(Error::Timeout(format!(
                        "mosquitto did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed)\n\
                         --- broker log ---\n{}",
                        self.log()
                    )));
                }
                Err(e) => return Err(io_error("waiting for mosquitto")(e)),
            }
        }
    }

    /// Stops the broker if it runs (SIGTERM), then starts it again on the same ports with the
    /// same config and persistence directory, and waits until it accepts connections. To
    /// restart after a crash, [`kill`](Self::kill) first.
    ///
    /// Mosquitto sets `SO_REUSEADDR` on its listeners, so connections left in TIME_WAIT do not
    /// block the port; if the port is taken anyway, the start is retried until the start-up
    /// timeout.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.spawn_and_wait(left) {
                Err(Error::Exited { .. }) if self.address_in_use() && !left.is_zero() => {
                    thread::sleep(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Writes the config, starts the process and waits for its listeners.
    fn spawn_and_wait(&mut self, timeout: Duration) -> Result<(), Error> {
        let config_path = self.dir().join("mosquitto.conf");
        fs::write(&config_path, self.config_text())
            .map_err(io_error(format!("writing {}", config_path.display())))?;
        // Start-up errors (a bad config line, a port in use) are printed before the log file is
        // open: keep them in `output.log`, truncated at each start so that it speaks of this one.
        let output = File::create(self.dir().join("output.log"))
            .map_err(io_error("creating the broker's output.log"))?;
        let output_err = output
            .try_clone()
            .map_err(io_error("creating the broker's output.log"))?;
        self.log_start =
            fs::metadata(self.dir().join("mosquitto.log")).map_or(0, |m| m.len() as usize);
        let mut command = Command::new(&self.program);
        command
            .arg("-c")
            .arg(&config_path)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(output_err);
        let child = command
            .spawn()
            .map_err(io_error(format!("starting {}", self.program.display())))?;
        self.child = Some(child);
        let ports: Vec<u16> = std::iter::once(self.port).chain(self.tls_port).collect();
        let deadline = Instant::now() + timeout;
        for port in ports {
            loop {
                if let Some(child) = self.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.child = None;
                        return Err(Error::Exited {
                            status,
                            dir: self.dir().to_path_buf(),
                            log: self.log(),
                        });
                    }
                }
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = self.kill();
                    return Err(Error::NotReady {
                        port,
                        waited: timeout,
                        dir: self.dir().to_path_buf(),
                        log: self.log(),
                    });
                }
                thread::sleep(POLL_INTERVAL);
            }
        }
        Ok(())
    }

    /// Whether the current (or last) process failed to bind a port.
    fn address_in_use(&self) -> bool {
        let needle = "Address already in use";
        let output = fs::read_to_string(self.dir().join("output.log")).unwrap_or_default();
        let log = fs::read(self.dir().join("mosquitto.log")).unwrap_or_default();
        let since_start = String::from_utf8_lossy(log.get(self.log_start..).unwrap_or_default());
        output.contains(needle) || since_start.contains(needle)
    }

    fn config_text(&self) -> String {
        let dir = self.dir();
        let mut c = String::new();
        let mut line = |text: String| {
            c.push_str(&text);
            c.push('\n');
        };
        line("# generated by spool_testkit::mosquitto".into());
        line("per_listener_settings false".into());
        // As root, Mosquitto drops privileges to the `mosquitto` user by default, which cannot
        // read this (root-owned, 0700) directory; "root" means: do not switch. A non-root user
        // is never switched.
        line("user root".into());
        line(format!(
            "log_dest file {}",
            dir.join("mosquitto.log").display()
        ));
        line("log_type all".into());
        line("connection_messages true".into());
        line(format!("persistence {}", self.config.persistence));
        if self.config.persistence {
            // persistence_location must end with a slash.
            line(format!("persistence_location {}/", dir.display()));
            line("autosave_on_changes true".into());
            line("autosave_interval 1".into());
        }
        if self.config.users.is_empty() {
            line("allow_anonymous true".into());
        } else {
            line("allow_anonymous false".into());
            line(format!("password_file {}", dir.join("passwd").display()));
        }
        for extra in &self.config.extra_config {
            line(extra.clone());
        }
        line(format!("listener {} 127.0.0.1", self.port));
        if let (Some(tls), Some(port)) = (&self.config.tls, self.tls_port) {
            line(format!("listener {port} 127.0.0.1"));
            line(format!("cafile {}", tls.ca_file.display()));
            line(format!("certfile {}", tls.cert_file.display()));
            line(format!("keyfile {}", tls.key_file.display()));
            line(format!("require_certificate {}", tls.require_certificate));
        }
        c
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, Error> {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).map_err(io_error("looking for a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("looking for a free port"))?
        .port();
    Ok(port)
}

/// Writes the users into a Mosquitto password file (hashed by `mosquitto_passwd -b`).
fn write_password_file(path: &Path, users: &[(String, String)]) -> Result<(), Error> {
    let program = find_program("mosquitto_passwd")?;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error(format!("creating {}", path.display())))?;
    for (user, password) in users {
        let out = Command::new(&program)
            .arg("-b")
            .arg(path)
            .arg(user)
            .arg(password)
            .stdin(Stdio::null())
            .output()
            .map_err(io_error(format!("running {}", program.display())))?;
        if !out.status.success() {
            let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
            let _ = write!(output, "{}", String::from_utf8_lossy(&out.stderr));
            return Err(Error::Client {
                command: format!("mosquitto_passwd -b {} {user} ***", path.display()),
                status: out.status,
                output,
            });
        }
    }
    Ok(())
}
