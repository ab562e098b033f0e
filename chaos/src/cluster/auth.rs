//! Bearer tokens of a test cluster: one token file every node reads (as every
//! pod reads the operator's token Secret), holding the harness's own admin
//! token and whatever principals a test adds. The file is replaced by
//! write-then-rename, as the kubelet swaps a Secret, and nodes re-read it every
//! 200 ms, so a test that changes it waits only briefly.

use std::io::Read;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::ChaosError;

/// One principal of the token file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestToken {
    pub name: String,
    pub token: String,
    /// `read`, `readwrite` or `admin`.
    pub role: String,
    pub prefixes: Vec<String>,
}

/// A fresh random token (24 bytes from the kernel, hex).
pub fn random_token() -> Result<String, ChaosError> {
    let mut buf = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The token file of a test cluster.
pub struct TestAuth {
    path: PathBuf,
    /// The harness's admin token (what [`super::Cluster::http`] sends).
    pub admin: String,
    tokens: Mutex<Vec<TestToken>>,
}

impl TestAuth {
    /// A token file in `dir` holding the harness's admin token.
    pub fn new(dir: &Path) -> Result<Self, ChaosError> {
        std::fs::create_dir_all(dir)?;
        let admin = random_token()?;
        let auth = Self {
            path: dir.join("tokens.yaml"),
            admin: admin.clone(),
            tokens: Mutex::new(vec![TestToken {
                name: "kvchaos-harness".into(),
                token: admin,
                role: "admin".into(),
                prefixes: Vec::new(),
            }]),
        };
        auth.write()?;
        Ok(auth)
    }

    pub fn file(&self) -> &Path {
        &self.path
    }

    /// A file holding only the admin token (what `kvctl --token-file` and
    /// `kvbench --token-file` read), next to the token file.
    pub fn admin_file(&self) -> Result<PathBuf, ChaosError> {
        let path = self.path.with_file_name("admin.token");
        super::tls::replace_file(&path, &self.admin)?;
        Ok(path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TestToken>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> Result<(), ChaosError> {
        let tokens = self.lock().clone();
        let mut text = String::from("tokens:\n");
        for t in &tokens {
            text.push_str(&format!(
                "  - name: {}\n    token: {}\n    role: {}\n    prefixes: {}\n",
                serde_json::to_string(&t.name).unwrap_or_default(),
                serde_json::to_string(&t.token).unwrap_or_default(),
                t.role,
                serde_json::to_string(&t.prefixes).unwrap_or_default(),
            ));
        }
        super::tls::replace_file(&self.path, &text)
    }

    /// Adds a principal with a new random token (in force once nodes reload).
    pub fn add(&self, name: &str, role: &str, prefixes: &[&str]) -> Result<String, ChaosError> {
        let token = random_token()?;
        self.lock().push(TestToken {
            name: name.into(),
            token: token.clone(),
            role: role.into(),
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        });
        self.write()?;
        Ok(token)
    }

    /// Removes `token` from the file (revoked once nodes reload).
    pub fn revoke(&self, token: &str) -> Result<(), ChaosError> {
        self.lock().retain(|t| t.token != token);
        self.write()
    }

    /// Writes raw contents into the token file (a broken Secret, say).
    pub fn write_raw(&self, contents: &str) -> Result<(), ChaosError> {
        super::tls::replace_file(&self.path, contents)
    }

    /// Writes the tokens the harness knows again (after [`Self::write_raw`]).
    pub fn restore(&self) -> Result<(), ChaosError> {
        self.write()
    }

    /// What every node needs to authenticate clients with this file.
    pub fn node_env(&self) -> Vec<(String, String)> {
        vec![
            ("KV_AUTH_ENABLED".into(), "true".into()),
            (
                "KV_AUTH_TOKEN_FILES".into(),
                self.path.to_string_lossy().to_string(),
            ),
            ("KV_AUTH_RELOAD_INTERVAL_MS".into(), "200".into()),
        ]
    }
}
