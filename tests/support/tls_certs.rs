//! Throwaway certificates for the TLS tests, made with the `openssl` command (`.ci/run`
//! installs it if missing): a CA, a server certificate for 127.0.0.1 signed by it, a client
//! certificate signed by it, and a second CA that signed nothing of these.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct TlsCerts {
    pub dir: PathBuf,
}

impl TlsCerts {
    pub fn make() -> TlsCerts {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringbus-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            openssl(
                &dir,
                &["req", "-x509"],
                &ec,
                &[
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.crt"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=ringbus test {ca}"),
                ],
            );
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for who in ["server", "client"] {
            openssl(
                &dir,
                &["req"],
                &ec,
                &[
                    "-keyout",
                    &format!("{who}.key"),
                    "-out",
                    &format!("{who}.csr"),
                    "-subj",
                    &format!("/CN=ringbus test {who}"),
                ],
            );
            openssl(
                &dir,
                &["x509", "-req"],
                &[],
                &[
                    "-in",
                    &format!("{who}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{who}.crt"),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{who}.ext"),
                ],
            );
        }
        TlsCerts { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn pem(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }
}

impl Drop for TlsCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, command: &[&str], key: &[&str], rest: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(command)
        .args(key)
        .args(rest)
        .output()
        .expect("openssl must be on PATH for the TLS tests (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
