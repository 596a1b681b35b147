//! A `redis-server` of the test's own, from PATH, on 127.0.0.1 at a free port, in a fresh
//! directory, with AOF and `appendfsync always`; stopped (and its directory removed) on drop.
// Each test file uses a part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The TLS port, for a server started with [`RedisServer::with_tls`].
    pub tls_port: Option<u16>,
    dir: PathBuf,
    config: String,
}

impl RedisServer {
    /// A server with the default user open (no password).
    pub fn start() -> RedisServer {
        RedisServer::with_config("")
    }

    /// A server with `extra` lines in its configuration (ACL users, say).
    pub fn with_config(extra: &str) -> RedisServer {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringbus-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let config = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nappendonly yes\nappendfsync always\nsave \"\"\n{extra}\n",
            dir.display()
        );
        let mut server = RedisServer {
            child: None,
            port,
            tls_port: None,
            dir,
            config,
        };
        server.run();
        server
    }

    /// A server also listening with TLS (on `tls_port`) with the certificate `server.crt` of
    /// `certs_dir`, trusting `ca.crt` for client certificates, which it demands if
    /// `auth_clients`; with `extra` configuration lines.
    pub fn with_tls(certs_dir: &std::path::Path, auth_clients: bool, extra: &str) -> RedisServer {
        let tls_port = free_port();
        let file = |name: &str| certs_dir.join(name).display().to_string();
        let lines = format!(
            "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients {}\n{extra}",
            file("server.crt"),
            file("server.key"),
            file("ca.crt"),
            if auth_clients { "yes" } else { "no" }
        );
        let mut server = RedisServer::with_config(&lines);
        server.tls_port = Some(tls_port);
        server
    }

    /// The `rediss://` URL of a TLS server, with `credentials` (`user:password@`) if any.
    pub fn tls_url(&self, credentials: &str) -> String {
        let port = self.tls_port.expect("a server started with_tls");
        format!("rediss://{credentials}127.0.0.1:{port}/")
    }

    /// The URL of the server, with `credentials` (`user:password@`) if any.
    pub fn url(&self, credentials: &str) -> String {
        format!("redis://{credentials}127.0.0.1:{}/", self.port)
    }

    /// Kills the server with SIGKILL (no shutdown, no final save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (its AOF read back).
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    fn run(&mut self) {
        let path = self.dir.join("redis.conf");
        std::fs::write(&path, &self.config).unwrap();
        let child = Command::new("redis-server")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH for the `redis` feature's tests (apt-get install redis-server)");
        self.child = Some(child);
        let started = Instant::now();
        while !self.answers() {
            // Our own server must be the one answering: one that exited (its port taken
            // between `free_port` and its bind) fails here, rather than a test talking to
            // another test's server.
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server exited at start ({status}): port {} taken?",
                    self.port
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl RedisServer {
    /// True once the server answers a `PING` with anything but "still loading" (a server
    /// whose default user is off answers `NOAUTH`: it is up).
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 64];
        match stream
            .write_all(b"PING\r\n")
            .and_then(|()| stream.read(&mut reply))
        {
            Ok(n) => n > 0 && !reply[..n].starts_with(b"-LOADING"),
            Err(_) => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
