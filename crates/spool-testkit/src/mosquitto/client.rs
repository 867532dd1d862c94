//! The real Mosquitto command-line clients, driven from a test: `mosquitto_pub` and
//! `mosquitto_sub`.
//!
//! [`Subscriber`] runs `mosquitto_sub -d -v` in the background and follows its debug output,
//! so a test knows when the subscription is acknowledged (no race with the first publish),
//! how many times the client connected (a reconnect shows that it lost its connection), and
//! gets each message with its exact payload (the byte count in the debug line says where the
//! payload ends, so payloads may hold newlines or any byte).
//!
//! Every call is bounded in time: a client that hangs is killed and reported with its output.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{find_program, io_error, Error};

/// How long `mosquitto_pub` and a subscription's set-up may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often waits look at a client's state.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// `mosquitto_sub` exits with this status when `-W` runs out.
const SUB_TIMED_OUT_STATUS: i32 = 27;

/// A message received: topic and payload.
pub type Message = (String, Vec<u8>);

/// Where and how a client connects; turned into `mosquitto_pub`/`mosquitto_sub` arguments.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Default 127.0.0.1 (matches the server certificate of [`crate::certs::Pki`]).
    pub host: String,
    pub port: u16,
    /// TLS, trusting this CA (`--cafile`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS (`--cert`, `--key`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `-i`; a random id when None.
    pub client_id: Option<String>,
    /// `-c`: clean session off (a persistent session; needs a `client_id`).
    pub persistent: bool,
    /// `-V`: "mqttv311" or "mqttv5"; the client's default (3.1.1) when None.
    pub protocol: Option<&'static str>,
    /// `-k`: keepalive in seconds; the client's default (60) when None.
    pub keepalive_secs: Option<u16>,
}

impl ClientOptions {
    pub fn new(port: u16) -> Self {
        ClientOptions {
            host: "127.0.0.1".to_string(),
            port,
            ca_file: None,
            client_cert: None,
            username: None,
            password: None,
            client_id: None,
            persistent: false,
            protocol: None,
            keepalive_secs: None,
        }
    }

    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    #[must_use]
    pub fn tls(mut self, ca_file: &Path) -> Self {
        self.ca_file = Some(ca_file.to_path_buf());
        self
    }

    #[must_use]
    pub fn client_cert(mut self, cert: &Path, key: &Path) -> Self {
        self.client_cert = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    #[must_use]
    pub fn auth(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.to_string());
        self.password = Some(password.to_string());
        self
    }

    #[must_use]
    pub fn id(mut self, client_id: &str) -> Self {
        self.client_id = Some(client_id.to_string());
        self
    }

    /// Clean session off, with this client id.
    #[must_use]
    pub fn persistent(mut self, client_id: &str) -> Self {
        self.persistent = true;
        self.id(client_id)
    }

    #[must_use]
    pub fn protocol(mut self, version: &'static str) -> Self {
        self.protocol = Some(version);
        self
    }

    #[must_use]
    pub fn keepalive(mut self, secs: u16) -> Self {
        self.keepalive_secs = Some(secs);
        self
    }

    /// The connection arguments common to `mosquitto_pub` and `mosquitto_sub`.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-h".into(),
            self.host.clone().into(),
            "-p".into(),
            self.port.to_string().into(),
        ];
        if let Some(ca) = &self.ca_file {
            args.extend(["--cafile".into(), ca.into()]);
        }
        if let Some((cert, key)) = &self.client_cert {
            args.extend(["--cert".into(), cert.into(), "--key".into(), key.into()]);
        }
        if let Some(user) = &self.username {
            args.extend(["-u".into(), user.into()]);
        }
        if let Some(password) = &self.password {
            args.extend(["-P".into(), password.into()]);
        }
        if let Some(id) = &self.client_id {
            args.extend(["-i".into(), id.into()]);
        }
        if self.persistent {
            args.push("-c".into());
        }
        if let Some(version) = self.protocol {
            args.extend(["-V".into(), version.into()]);
        }
        if let Some(secs) = self.keepalive_secs {
            args.extend(["-k".into(), secs.to_string().into()]);
        }
        args
    }
}

/// Publishes one message with `mosquitto_pub` (payload from stdin, so any bytes) and waits
/// until the client is done: at QoS 1 and 2, the broker has acknowledged it.
pub fn publish(opts: &ClientOptions, topic: &str, payload: &[u8], qos: u8) -> Result<(), Error> {
    let mut args = opts.args();
    args.extend([
        "-t".into(),
        topic.into(),
        "-q".into(),
        qos.to_string().into(),
    ]);
    args.push("-s".into());
    run("mosquitto_pub", &args, payload, CLIENT_TIMEOUT).map(|_| ())
}

/// Connects, subscribes to `filter` and disconnects once the broker acknowledged the
/// subscription (`mosquitto_sub -E`). With [`ClientOptions::persistent`], the session and its
/// subscription stay on the broker, which queues QoS 1 and 2 messages for it while it is away.
pub fn register_subscription(opts: &ClientOptions, filter: &str, qos: u8) -> Result<(), Error> {
    let mut args = opts.args();
    args.extend([
        "-t".into(),
        filter.into(),
        "-q".into(),
        qos.to_string().into(),
    ]);
    args.push("-E".into());
    run("mosquitto_sub", &args, b"", CLIENT_TIMEOUT).map(|_| ())
}

/// Subscribes to `filter` and collects up to `count` messages, for at most `timeout`
/// (`mosquitto_sub -C count -W secs`, rounded up to whole seconds). Returns what arrived,
/// possibly fewer than `count` when the time ran out; an error if the client failed
/// (refused connection, TLS, authentication).
///
/// The subscription is made when the client starts, so use it for messages that are already
/// waiting (a persistent session's queue, retained messages); for live traffic use
/// [`Subscriber`], which returns only once it is subscribed.
pub fn subscribe_collect(
    opts: &ClientOptions,
    filter: &str,
    qos: u8,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Message>, Error> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    let args = sub_args(
        opts,
        filter,
        qos,
        &["-C", &count.to_string(), "-W", &secs.max(1).to_string()],
    );
    let command = describe("mosquitto_sub", &args);
    let mut child = line_buffered_sub(&args)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error("starting mosquitto_sub"))?;
    let stderr = drain_in_background(child.stderr.take());
    let stdout = child.stdout.take();
    let parser = thread::spawn(move || {
        let mut messages = Vec::new();
        if let Some(stdout) = stdout {
            parse_sub_output(stdout, |event| {
                if let SubEvent::Message(m) = event {
                    messages.push(m);
                }
            });
        }
        messages
    });
    // `-W` bounds the client; this bounds a client that ignores it.
    let status = wait_bounded(&mut child, timeout + CLIENT_TIMEOUT, &command)?;
    let messages = parser.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status.success() || status.code() == Some(SUB_TIMED_OUT_STATUS) {
        Ok(messages)
    } else {
        Err(Error::Client {
            command,
            status,
            output: stderr,
        })
    }
}

/// A `mosquitto_sub` running in the background; killed when dropped.
pub struct Subscriber {
    child: Child,
    command: String,
    messages: Receiver<Message>,
    state: Arc<SubState>,
}

#[derive(Default)]
struct SubState {
    connect_attempts: AtomicUsize,
    subacks: AtomicUsize,
    exited: AtomicBool,
    stderr: Mutex<String>,
}

impl Subscriber {
    /// Starts `mosquitto_sub` on `filter` and returns once the broker acknowledged the
    /// subscription. The client reconnects and subscribes again by itself whenever it loses
    /// its connection (every attempt is counted).
    pub fn start(opts: &ClientOptions, filter: &str, qos: u8) -> Result<Subscriber, Error> {
        let args = sub_args(opts, filter, qos, &[]);
        let command = describe("mosquitto_sub", &args);
        let mut child = line_buffered_sub(&args)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error("starting mosquitto_sub"))?;
        let state = Arc::new(SubState::default());
        let (tx, messages) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                parse_sub_output(stdout, |event| match event {
                    SubEvent::Connecting => {
                        state.connect_attempts.fetch_add(1, Ordering::SeqCst);
                    }
                    SubEvent::Subscribed => {
                        state.subacks.fetch_add(1, Ordering::SeqCst);
                    }
                    SubEvent::Message(m) => {
                        let _ = tx.send(m);
                    }
                });
                state.exited.store(true, Ordering::SeqCst);
            });
        }
        if let Some(mut stderr) = child.stderr.take() {
            let state = Arc::clone(&state);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let mut all = state.stderr.lock().unwrap_or_else(PoisonError::into_inner);
                    all.push_str(&text);
                }
            });
        }
        let subscriber = Subscriber {
            child,
            command,
            messages,
            state,
        };
        subscriber.wait_subscribed(1, CLIENT_TIMEOUT)?;
        Ok(subscriber)
    }

    /// Waits until the broker has acknowledged `n` subscriptions in total (one per connection:
    /// `n = 2` after one reconnect).
    pub fn wait_subscribed(&self, n: usize, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.subscriptions() >= n {
                return Ok(());
            }
            if self.state.exited.load(Ordering::SeqCst) {
                return Err(Error::Timeout(format!(
                    "`{}` exited before its subscription was acknowledged: {}",
                    self.command,
                    self.stderr()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!(
                    "`{}`: {n} subscription(s) not acknowledged within {timeout:?} (got {}); \
                     stderr: {}",
                    self.command,
                    self.subscriptions(),
                    self.stderr()
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until the client has made `n` connection attempts in total. True if it did.
    pub fn wait_connect_attempts(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.connect_attempts() < n {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(POLL_INTERVAL);
        }
        true
    }

    /// CONNECTs sent so far (1 after start; each more is a reconnect after a lost connection).
    pub fn connect_attempts(&self) -> usize {
        self.state.connect_attempts.load(Ordering::SeqCst)
    }

    /// SUBACKs received so far.
    pub fn subscriptions(&self) -> usize {
        self.state.subacks.load(Ordering::SeqCst)
    }

    /// The next message, waiting at most `timeout`.
    pub fn next_message(&self, timeout: Duration) -> Option<Message> {
        self.messages.recv_timeout(timeout).ok()
    }

    /// A message that has already arrived, without waiting.
    pub fn try_message(&self) -> Option<Message> {
        self.messages.try_recv().ok()
    }

    /// Up to `count` messages, waiting at most `timeout` in total.
    pub fn collect(&self, count: usize, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) => out.push(m),
                Err(_) => break,
            }
        }
        out
    }

    /// What the client printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.state
            .stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The process id of `mosquitto_sub`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub` arguments with its debug output (`-d -v`), which [`parse_sub_output`] reads.
fn sub_args(opts: &ClientOptions, filter: &str, qos: u8, extra: &[&str]) -> Vec<OsString> {
    let mut args = opts.args();
    args.extend([
        "-t".into(),
        filter.into(),
        "-q".into(),
        qos.to_string().into(),
    ]);
    args.extend(["-d".into(), "-v".into()]);
    args.extend(extra.iter().map(OsString::from));
    args
}

/// `mosquitto_sub` under `stdbuf -oL`: its debug lines (CONNECT, SUBACK) are printed with
/// stdio, fully buffered on a pipe, and would reach us only with the next message.
fn line_buffered_sub(args: &[OsString]) -> Result<Command, Error> {
    let stdbuf = find_program("stdbuf")?;
    let program = find_program("mosquitto_sub")?;
    let mut command = Command::new(stdbuf);
    command.arg("-oL").arg(program).args(args);
    Ok(command)
}

enum SubEvent {
    Connecting,
    Subscribed,
    Message(Message),
}

/// Follows `mosquitto_sub -d -v` output. Debug lines start with "Client "; a message is
/// announced by `Client ID received PUBLISH (d0, q1, r0, m1, 'TOPIC', ... (N bytes))`, then,
/// possibly after more debug lines (the PUBACK it sends), comes `TOPIC PAYLOAD\n` where PAYLOAD
/// is exactly N bytes (so it may hold newlines).
fn parse_sub_output(stdout: impl Read, mut on_event: impl FnMut(SubEvent)) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    // Announced by PUBLISH lines, their "TOPIC PAYLOAD" lines not read yet (at QoS 2 several
    // PUBLISHes can come before the first message is printed, at its PUBREL).
    let mut pending: std::collections::VecDeque<(String, usize)> =
        std::collections::VecDeque::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let announced = pending.iter().position(|(topic, _)| {
            line.starts_with(topic.as_bytes()) && line.get(topic.len()) == Some(&b' ')
        });
        if let Some((topic, len)) = announced.and_then(|i| pending.remove(i)) {
            let prefix = topic.len() + 1;
            // "TOPIC " + N payload bytes + "\n"; the payload may hold newlines.
            let total = prefix + len + 1;
            if line.len() < total {
                let have = line.len();
                line.resize(total, 0);
                if reader.read_exact(&mut line[have..]).is_err() {
                    return;
                }
            }
            let payload = line[prefix..prefix + len].to_vec();
            on_event(SubEvent::Message((topic, payload)));
            continue;
        }
        let text = String::from_utf8_lossy(&line);
        if !text.starts_with("Client ") {
            continue;
        }
        let text = text.trim_end();
        if text.ends_with(" sending CONNECT") {
            on_event(SubEvent::Connecting);
        } else if text.ends_with(" received SUBACK") {
            on_event(SubEvent::Subscribed);
        } else if let Some(announced) = parse_publish_line(text) {
            pending.push_back(announced);
        }
    }
}

fn parse_publish_line(line: &str) -> Option<(String, usize)> {
    let rest = &line[line.find(" received PUBLISH (")?..];
    let start = rest.find('\'')? + 1;
    let end = rest.rfind("', ... (")?;
    let topic = rest.get(start..end)?.to_string();
    let count = &rest[end + "', ... (".len()..];
    let len = count[..count.find(" bytes))")?].parse().ok()?;
    Some((topic, len))
}

/// Runs a client to completion with `input` on stdin, bounded by `timeout`.
fn run(
    name: &'static str,
    args: &[OsString],
    input: &[u8],
    timeout: Duration,
) -> Result<String, Error> {
    let program = find_program(name)?;
    let command = describe(name, args);
    let mut child = Command::new(&program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error(format!("starting {}", program.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        // A client that fails early stops reading: that error is reported by its status.
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let stdout = drain_in_background(child.stdout.take());
    let stderr = drain_in_background(child.stderr.take());
    let status = wait_bounded(&mut child, timeout, &command)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(Error::Client {
            command,
            status,
            output: format!("{stdout}{stderr}"),
        })
    }
}

/// Waits for `child` at most `timeout`; kills it and fails after that.
fn wait_bounded(child: &mut Child, timeout: Duration, command: &str) -> Result<ExitStatus, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_error(format!("waiting for `{command}`")))?
        {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Timeout(format!(
                "`{command}` did not finish within {timeout:?} (killed)"
            )));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn drain_in_background(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// The command line for messages, with the password masked.
fn describe(name: &str, args: &[OsString]) -> String {
    let mut out = name.to_string();
    let mut mask_next = false;
    for arg in args {
        out.push(' ');
        if mask_next {
            out.push_str("***");
        } else {
            out.push_str(&arg.to_string_lossy());
        }
        mask_next = arg == "-P";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_lines_are_parsed() {
        let line = "Client (null) received PUBLISH (d0, q1, r0, m1, 'a/b c', ... (11 bytes))\n";
        assert_eq!(parse_publish_line(line), Some(("a/b c".to_string(), 11)));
        let line = "Client id received PUBLISH (d0, q0, r0, m0, 'it's', ... (0 bytes))";
        assert_eq!(parse_publish_line(line), Some(("it's".to_string(), 0)));
        assert_eq!(parse_publish_line("Client x received SUBACK"), None);
    }

    #[test]
    fn sub_output_is_parsed() {
        let output: &[u8] = b"Client (null) sending CONNECT\n\
            Client (null) received CONNACK (0)\n\
            Client (null) received SUBACK\n\
            Subscribed (mid: 1): 1\n\
            Client (null) received PUBLISH (d0, q1, r0, m1, 'a/b', ... (5 bytes))\n\
            Client (null) sending PUBACK (m1, rc0)\n\
            a/b x\ny z\n\
            Client (null) received PUBLISH (d0, q0, r0, m0, 'c', ... (0 bytes))\n\
            c \n\
            Client (null) sending CONNECT\n";
        let mut events = Vec::new();
        parse_sub_output(output, |e| {
            events.push(match e {
                SubEvent::Connecting => "connect".to_string(),
                SubEvent::Subscribed => "suback".to_string(),
                SubEvent::Message((t, p)) => format!("{t}={}", String::from_utf8_lossy(&p)),
            });
        });
        assert_eq!(events, ["connect", "suback", "a/b=x\ny z", "c=", "connect"]);
    }

    #[test]
    fn qos2_messages_announced_before_they_are_printed_are_all_kept() {
        // At QoS 2 mosquitto_sub prints a message at its PUBREL: several PUBLISH lines can
        // come first.
        let output: &[u8] =
            b"Client (null) received PUBLISH (d0, q2, r0, m1, 't', ... (2 bytes))\n\
            Client (null) sending PUBREC (m1, rc0)\n\
            Client (null) received PUBLISH (d0, q2, r0, m2, 't', ... (3 bytes))\n\
            Client (null) sending PUBREC (m2, rc0)\n\
            Client (null) received PUBREL (m1)\n\
            t m1\n\
            Client (null) sending PUBCOMP (m1)\n\
            Client (null) received PUBREL (m2)\n\
            t m22\n\
            Client (null) sending PUBCOMP (m2)\n";
        let mut got = Vec::new();
        parse_sub_output(output, |e| {
            if let SubEvent::Message((t, p)) = e {
                got.push(format!("{t}={}", String::from_utf8_lossy(&p)));
            }
        });
        assert_eq!(got, ["t=m1", "t=m22"]);
    }

    #[test]
    fn passwords_are_masked() {
        let args: Vec<OsString> = vec!["-u".into(), "alice".into(), "-P".into(), "pw".into()];
        assert_eq!(
            describe("mosquitto_pub", &args),
            "mosquitto_pub -u alice -P ***"
        );
    }
}
