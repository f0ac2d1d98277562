//! A real Mosquitto broker for tests: started on a free loopback port with its own config in a
//! temporary directory, waited for until it accepts connections, stopped on drop.
//!
//! Mosquitto comes from Debian's `mosquitto` package (`.ci/run` installs it when missing). Its
//! binary lives in `/usr/sbin`, which is not on a normal user's PATH, so that is searched too.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Mosquitto; killed (and waited for) when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    persistent: bool,
    /// With a user: anonymous clients are refused.
    user: Option<(String, String)>,
    /// With TLS: the listener speaks only TLS.
    tls: Option<Tls>,
}

/// A TLS listener's files (PEM).
#[derive(Clone)]
pub struct Tls {
    /// The CA whose certificates the broker trusts (for client certificates).
    pub ca: PathBuf,
    /// The broker's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Whether clients must present a certificate signed by `ca`.
    pub require_client_cert: bool,
}

/// The mosquitto binary: on PATH, or in the sbin directories Debian uses.
pub fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mosquitto not found on PATH or in /usr/sbin: install it with \
                 `apt-get install -y mosquitto` (.ci/run does this)"
            )
        })
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Mosquitto {
    /// A broker without persistence on a free port.
    pub fn start() -> Self {
        Self::launch(false, None, None)
    }

    /// A broker whose only listener speaks TLS with `tls`'s certificate, and admits only `user`
    /// when one is given.
    pub fn start_with_tls(tls: Tls, user: Option<(&str, &str)>) -> Self {
        Self::launch(
            false,
            user.map(|(u, p)| (u.to_string(), p.to_string())),
            Some(tls),
        )
    }

    /// A broker that admits only `user` with `password` (a password file made with Debian's
    /// `mosquitto_passwd`; `allow_anonymous false`).
    pub fn start_with_password(user: &str, password: &str) -> Self {
        Self::launch(false, Some((user.to_string(), password.to_string())), None)
    }

    /// A broker that saves its state (persistent sessions and their queued messages) when
    /// stopped with [`Self::stop`] and reloads it on [`Self::restart`].
    pub fn start_persistent() -> Self {
        Self::launch(true, None, None)
    }

    fn launch(persistent: bool, user: Option<(String, String)>, tls: Option<Tls>) -> Self {
        let mut last_log = String::new();
        // Another process may grab the free port between our probe and mosquitto's bind.
        for _ in 0..3 {
            let mut m = Self {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                persistent,
                user: user.clone(),
                tls: tls.clone(),
            };
            match m.spawn() {
                Ok(()) => return m,
                Err(log) => last_log = log,
            }
        }
        panic!("mosquitto did not start: {last_log}");
    }

    fn config(&self) -> PathBuf {
        let path = self.dir.path().join("mosquitto.conf");
        let mut conf = format!(
            "listener {} 127.0.0.1\nallow_anonymous {}\n\
             # Run as whoever runs the tests (as root it would switch to user `mosquitto`,\n\
             # which cannot read this private temporary directory).\nuser root\n",
            self.port,
            self.user.is_none()
        );
        if let Some((user, password)) = &self.user {
            let file = self.dir.path().join("passwd");
            let tool = binary().with_file_name("mosquitto_passwd");
            let tool = if tool.is_file() {
                tool
            } else {
                PathBuf::from("/usr/bin/mosquitto_passwd")
            };
            let status = Command::new(&tool)
                .args(["-b", "-c"])
                .arg(&file)
                .args([user, password])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()));
            assert!(status.success(), "mosquitto_passwd failed: {status}");
            conf.push_str(&format!("password_file {}\n", file.display()));
        }
        if let Some(tls) = &self.tls {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {}\n",
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display(),
                tls.require_client_cert
            ));
        }
        if self.persistent {
            conf.push_str(&format!(
                "persistence true\npersistence_location {}/\n",
                self.dir.path().display()
            ));
        }
        std::fs::write(&path, conf).expect("write mosquitto.conf");
        path
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let conf = self.config();
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("mosquitto log file");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary().display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                self.kill();
                return Err(read(&self.log_path()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        read(&self.log_path())
    }

    /// Stops it gracefully (SIGTERM: a persistent broker saves its state) and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }

    /// Starts it again on the same port (and with the same saved state).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.spawn() {
            panic!("mosquitto did not restart on port {}: {log}", self.port);
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
