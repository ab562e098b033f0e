//! A private PostgreSQL server for one test: `initdb` into a temporary
//! directory, listening on a free port of 127.0.0.1 (and a socket in that
//! directory), password authentication, stopped and removed on drop. Can be
//! stopped hard and started again to simulate an outage.
//!
//! Needs the PostgreSQL server binaries (Debian `postgresql`); the README test
//! command installs them. When they are missing the test fails with a message
//! saying so: it never skips.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;
use anyhow::bail;

pub const PASSWORD: &str = "kv-test-pw";

pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    bin: PathBuf,
    /// Run server commands as this user (PostgreSQL refuses to run as root).
    as_user: Option<String>,
    /// TLS: the server's certificate and key files (`ssl=on`).
    tls: Option<(PathBuf, PathBuf)>,
}

fn find_bin() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("KV_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).context(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin; set KV_TEST_PG_BIN to override). \
         Run ./scripts/test.sh, which installs the Debian package `postgresql`, or install it yourself.",
    )
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Postgres {
    /// initdb + start. Blocking (a second or two); call before starting nodes.
    pub fn start() -> anyhow::Result<Postgres> {
        Self::start_with(None)
    }

    /// The same with TLS on, serving `cert_pem` / `key_pem` (plaintext clients are
    /// still let in: what a client accepts is its `sslmode`).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> anyhow::Result<Postgres> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> anyhow::Result<Postgres> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new().prefix("kv-pg-").tempdir()?;
        let as_user = is_root().then(|| "postgres".to_string());
        if let Some(u) = &as_user {
            let st = Command::new("chown")
                .arg("-R")
                .arg(format!("{u}:"))
                .arg(dir.path())
                .status()?;
            if !st.success() {
                bail!(
                    "chown of the PostgreSQL temp dir to {u} failed (is the `postgres` user there?)"
                );
            }
        }
        let mut pg = Postgres {
            dir,
            port: super::free_port(),
            bin,
            as_user,
            tls: None,
        };
        if let Some((cert, key)) = tls {
            let (c, k) = (
                pg.dir.path().join("server.crt"),
                pg.dir.path().join("server.key"),
            );
            std::fs::write(&c, cert)?;
            std::fs::write(&k, key)?;
            // PostgreSQL refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))?;
            if let Some(u) = &pg.as_user {
                Command::new("chown")
                    .arg(format!("{u}:"))
                    .arg(&c)
                    .arg(&k)
                    .status()?;
            }
            pg.tls = Some((c, k));
        }
        let pwfile = pg.dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD)?;
        if let Some(u) = &pg.as_user {
            Command::new("chown")
                .arg(format!("{u}:"))
                .arg(&pwfile)
                .status()?;
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                "kv",
                "--pwfile",
                &pwfile.display().to_string(),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
        )?;
        pg.start_server()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(u).arg("--").arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) -> anyhow::Result<()> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        if let Some((cert, key)) = &self.tls {
            opts.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().display().to_string(),
                "-o",
                &opts,
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
    }

    /// Stops the server like a crash (`immediate`: no checkpoint, clients cut off).
    pub fn kill_server(&self) -> anyhow::Result<()> {
        let data = self.data().display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "-w", "-t", "10", "stop"],
        )
    }

    /// Connection URL with password and no TLS parameters (the node's settings add them).
    pub fn url_on(&self, host: &str) -> String {
        format!("postgres://kv:{PASSWORD}@{host}:{}/postgres", self.port)
    }

    /// Connection URL with password, for `KV_STORAGE_POSTGRES_URL`.
    pub fn url(&self) -> String {
        format!(
            "postgres://kv:{PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.kill_server();
    }
}
