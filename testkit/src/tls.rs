//! TLS test fixtures: a throw-away PKI made with the `openssl` command line (a CA, a server
//! certificate for 127.0.0.1/localhost, a client certificate, and an unrelated CA), and
//! stunnel terminating TLS in front of a plain TCP service; both removed on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, ChildGuard};

pub const STUNNEL: &str = "/usr/bin/stunnel4";

/// Certificates and keys (PEM) in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let me = Self { dir };
        me.ca("ca", "flowlens test CA");
        me.ca("other_ca", "unrelated test CA");
        me.leaf(
            "server",
            "localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        me.leaf("client", "flowlens-client", "extendedKeyUsage=clientAuth\n");
        me
    }

    /// `<name>.pem` (or `<name>.key` when `name` ends in `.key`) in the PKI directory.
    pub fn path(&self, name: &str) -> PathBuf {
        if name.ends_with(".key") {
            self.dir.path().join(name)
        } else {
            self.dir.path().join(format!("{name}.pem"))
        }
    }

    /// [`Pki::path`] as text, for configuration files.
    pub fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `openssl req` making a new P-256 key (unencrypted) into `key`, then `rest`.
    fn req(&self, key: &str, rest: &[&str]) {
        let mut args = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
        ];
        args.extend_from_slice(rest);
        self.openssl(&args);
    }

    fn ca(&self, name: &str, cn: &str) {
        let subject = format!("/CN={cn}");
        let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
        self.req(
            &key,
            &["-x509", "-out", &pem, "-days", "2", "-subj", &subject],
        );
    }

    fn leaf(&self, name: &str, cn: &str, extensions: &str) {
        let subject = format!("/CN={cn}");
        let [key, csr, pem, ext] = ["key", "csr", "pem", "ext"].map(|x| format!("{name}.{x}"));
        std::fs::write(
            self.dir.path().join(&ext),
            format!("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n{extensions}"),
        )
        .unwrap();
        self.req(&key, &["-out", &csr, "-subj", &subject]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// stunnel on a free port of 127.0.0.1: TLS with the PKI's server certificate, relayed to
/// 127.0.0.1:`target` in clear; with `require_client_cert`, only clients presenting a
/// certificate signed by the PKI's CA get through.
pub struct Stunnel {
    pub port: u16,
    dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl Stunnel {
    pub fn start(pki: &Pki, target: u16, require_client_cert: bool) -> Self {
        Self::start_on(free_port(), pki, target, require_client_cert)
    }

    /// Like [`Stunnel::start`] on a port chosen before (e.g. one a broker advertises).
    pub fn start_on(port: u16, pki: &Pki, target: u16, require_client_cert: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stunnel.log");
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = 5\n[relay]\naccept = 127.0.0.1:{port}\n\
             connect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n",
            pki.file("server"),
            pki.file("server.key"),
        );
        if require_client_cert {
            conf.push_str(&format!("verifyChain = yes\nCAfile = {}\n", pki.file("ca")));
        }
        let conf_path = dir.path().join("stunnel.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut guard = ChildGuard::spawn("stunnel", Command::new(STUNNEL).arg(&conf_path), &log);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            guard.assert_running(&log);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "stunnel not listening on {port}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            dir,
            _guard: guard,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
