//! A private S3-protocol server for one test: moto's standalone server
//! (PyPI `moto[server]`) on a free port of 127.0.0.1, with one bucket, stopped
//! on drop. It is a real HTTP server speaking the S3 protocol (signed requests,
//! multipart uploads, listings); our code reaches it through `object_store`
//! exactly as it reaches AWS or MinIO.
//!
//! `./scripts/test.sh` installs moto when it is missing; without it the test
//! fails with a message saying so: it never skips.

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

pub const BUCKET: &str = "kv-backups";

pub struct S3Server {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server and creates [`BUCKET`].
    pub async fn start() -> anyhow::Result<S3Server> {
        let bin = std::env::var("KV_TEST_S3_BIN").unwrap_or_else(|_| "moto_server".into());
        let dir = tempfile::Builder::new().prefix("kv-s3-").tempdir()?;
        let port = super::free_port();
        let log = std::fs::File::create(dir.path().join("moto.log"))?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting the S3-protocol test server `{bin}` failed. Run ./scripts/test.sh, which installs \
                     it (pip install 'moto[server]'), or set KV_TEST_S3_BIN to one"
                )
            })?;
        let s = S3Server {
            child,
            port,
            _dir: dir,
        };
        let http = kvserver::tls::http_builder().no_proxy().build()?;
        let bucket = format!("{}/{BUCKET}", s.endpoint());
        super::wait_for("the S3 test server", Duration::from_secs(30), || {
            let req = http.put(&bucket);
            async move { req.send().await.ok().filter(|r| r.status().is_success()) }
        })
        .await?;
        Ok(s)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How our code reaches it (moto accepts any key pair).
    pub fn options(&self) -> kvserver::backup::dest::S3Options {
        kvserver::backup::dest::S3Options {
            endpoint: Some(self.endpoint()),
            region: None,
            credentials: Some(("test-key".into(), "test-secret".into())),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
