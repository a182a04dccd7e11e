//! `hull pull`: the OCI distribution protocol, as registries speak it.
//!
//! - HTTPS, except for localhost / 127.0.0.1 / ::1 and registries listed in
//!   `HULL_INSECURE_REGISTRIES` (comma-separated HOST[:PORT]), which get HTTP.
//! - Bearer tokens from the WWW-Authenticate challenge (anonymous, or with
//!   the credentials of the user's docker config.json), or Basic auth.
//! - An index or manifest list resolves to its linux/amd64 manifest; OCI and
//!   Docker v2 schema 2 manifests; gzip, zstd or plain layers.
//! - Layers download concurrently with progress bars, with bounded retries;
//!   every blob is verified against its digest before the store keeps it.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::config::{self, ImageConfig, Index, Manifest};
use crate::digest::Digest;
use crate::import::{pick_platform, platforms};
use crate::reference::{DEFAULT_REGISTRY, Reference};
use crate::store::{ImageRecord, LayerRecord, MAX_JSON_BLOB, Store, StoreError, now};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
const ATTEMPTS: u32 = 3;
const PARALLEL: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{registry}: cannot reach the registry: {why}")]
    Unreachable { registry: String, why: String },
    #[error("{what}: not found in {registry} (HTTP 404)")]
    NotFound { registry: String, what: String },
    #[error(
        "{registry}: access denied to {what} (HTTP {status}); log in with docker login, or check the name"
    )]
    Denied {
        registry: String,
        what: String,
        status: u16,
    },
    #[error("{registry}: {what}: HTTP {status}: {body}")]
    Http {
        registry: String,
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error("{0}: no image for linux/amd64 (the registry has: {1})")]
    Platform(String, String),
}

/// How to reach one registry, and the credentials the user has for it.
pub(crate) struct Client {
    pub(crate) agent: ureq::Agent,
    /// For messages: the registry as the user named it.
    pub(crate) registry: String,
    pub(crate) base: String,
    pub(crate) repository: String,
    basic: Option<String>,
    pub(crate) token: Mutex<Option<String>>,
}

fn insecure(host: &str) -> bool {
    let bare = host.rsplit_once(':').map_or(host, |(h, _)| h);
    if matches!(bare, "localhost" | "127.0.0.1" | "[::1]") {
        return true;
    }
    std::env::var("HULL_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .any(|h| !h.trim().is_empty() && (h.trim() == host || h.trim() == bare))
}

/// Basic credentials for `host` from the user's docker config.json.
fn docker_credentials(host: &str) -> Option<String> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))?;
    let data = std::fs::read(dir.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&data).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let keys: Vec<String> = if host == DEFAULT_REGISTRY {
        vec![
            "https://index.docker.io/v1/".into(),
            "index.docker.io".into(),
            "docker.io".into(),
        ]
    } else {
        vec![
            host.to_string(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    };
    keys.iter()
        .find_map(|k| auths.get(k)?.get("auth")?.as_str().map(str::to_string))
        .filter(|a| !a.is_empty())
}

/// `Bearer realm="...",service="...",scope="..."` into its parameters.
fn parse_challenge(h: &str) -> Option<(String, Vec<(String, String)>)> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (v, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((k.trim().to_ascii_lowercase(), v.to_string()));
        rest = tail.trim_start_matches([',', ' ']);
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl Client {
    pub(crate) fn new(r: &Reference) -> Client {
        let host = if r.registry == DEFAULT_REGISTRY {
            "registry-1.docker.io".to_string()
        } else {
            r.registry.clone()
        };
        let scheme = if insecure(&r.registry) {
            "http"
        } else {
            "https"
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(60))
            .user_agent(concat!("hull/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            agent,
            registry: r.registry.clone(),
            base: format!("{scheme}://{host}/v2/{}", r.repository),
            repository: r.repository.clone(),
            basic: docker_credentials(&r.registry),
            token: Mutex::new(None),
        }
    }

    pub(crate) fn authorize(&self, challenge: &str) -> Result<(), PullError> {
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Err(self.invalid(
                "authentication",
                format!("unreadable challenge {challenge:?}"),
            ));
        };
        if scheme == "basic" {
            let Some(b) = &self.basic else {
                return Err(PullError::Denied {
                    registry: self.registry.clone(),
                    what: self.repository.clone(),
                    status: 401,
                });
            };
            *lock(&self.token) = Some(format!("Basic {b}"));
            return Ok(());
        }
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm =
            get("realm").ok_or_else(|| self.invalid("authentication", "no realm".into()))?;
        let mut req = self.agent.get(&realm);
        if let Some(s) = get("service") {
            req = req.query("service", &s);
        }
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        req = req.query("scope", &scope);
        if let Some(b) = &self.basic {
            req = req.set("Authorization", &format!("Basic {b}"));
        }
        let resp = req.call().map_err(|e| self.http_error("token", e))?;
        let body = read_limited(resp.into_reader(), MAX_JSON_BLOB)
            .map_err(|e| self.invalid("token", e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| self.invalid("token", e.to_string()))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| self.invalid("token", "no token in the answer".into()))?;
        *lock(&self.token) = Some(format!("Bearer {token}"));
        Ok(())
    }

    pub(crate) fn invalid(&self, what: &str, why: String) -> PullError {
        PullError::Invalid {
            what: format!("{}: {what}", self.registry),
            why,
        }
    }

    pub(crate) fn http_error(&self, what: &str, e: ureq::Error) -> PullError {
        match e {
            ureq::Error::Status(404, _) => PullError::NotFound {
                registry: self.registry.clone(),
                what: what.to_string(),
            },
            ureq::Error::Status(s @ (401 | 403), _) => PullError::Denied {
                registry: self.registry.clone(),
                what: what.to_string(),
                status: s,
            },
            ureq::Error::Status(status, resp) => PullError::Http {
                registry: self.registry.clone(),
                what: what.to_string(),
                status,
                body: resp
                    .into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(200)
                    .collect(),
            },
            ureq::Error::Transport(t) => PullError::Unreachable {
                registry: self.registry.clone(),
                why: t.to_string(),
            },
        }
    }

    /// GET `path` under the repository, authenticating once if asked to,
    /// retrying transport errors and 5xx a bounded number of times.
    fn get(
        &self,
        path: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<ureq::Response, PullError> {
        let url = format!("{}/{path}", self.base);
        let mut authed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.set("Accept", a);
            }
            if let Some(t) = lock(&self.token).clone() {
                req = req.set("Authorization", &t);
            }
            match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, resp)) if !authed => {
                    authed = true;
                    let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
                    self.authorize(&challenge)?;
                }
                Err(ureq::Error::Status(s, _)) if s >= 500 && attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(300 * u64::from(attempt)));
                }
                Err(ureq::Error::Transport(_)) if attempt < ATTEMPTS => {
                    std::thread::sleep(Duration::from_millis(300 * u64::from(attempt)));
                }
                Err(e) => return Err(self.http_error(what, e)),
            }
        }
    }

    /// A manifest or index by tag or digest: (bytes, media type, digest).
    fn manifest(
        &self,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, String, Digest), PullError> {
        let what = format!("manifest {}:{reference}", self.repository);
        let resp = self.get(
            &format!("manifests/{reference}"),
            Some(MANIFEST_TYPES),
            &what,
        )?;
        let media = resp
            .header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let data = read_limited(resp.into_reader(), MAX_JSON_BLOB)
            .map_err(|e| self.invalid(&what, e.to_string()))?;
        let digest = Digest::of(&data);
        if let Some(e) = expected {
            if *e != digest {
                return Err(StoreError::DigestMismatch {
                    expected: e.clone(),
                    actual: digest,
                    size: data.len() as u64,
                }
                .into());
            }
        }
        Ok((data, media, digest))
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_limited(r: impl Read, max: u64) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    r.take(max + 1).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(data)
}

/// Reads through a progress bar.
struct Progress<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

/// Downloads one blob into the store (verified), with retries.
fn fetch_blob(
    c: &Client,
    store: &Store,
    d: &Digest,
    size: u64,
    bars: &MultiProgress,
) -> Result<(), PullError> {
    if store.has_blob(d) {
        return Ok(());
    }
    let bar = bars.add(ProgressBar::new(size));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(d.short().to_string());
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        bar.set_position(0);
        let what = format!("blob {d}");
        let result = c.get(&format!("blobs/{d}"), None, &what).and_then(|resp| {
            let r = Progress {
                inner: resp.into_reader(),
                bar: bar.clone(),
            };
            // Never more than the manifest says: a larger body is wrong.
            store
                .put_blob(r.take(size.saturating_add(1)), Some(d))
                .map_err(PullError::from)
        });
        match result {
            Ok(_) => {
                bar.finish_with_message("done");
                return Ok(());
            }
            // A wrong digest or a dropped connection may be transient.
            Err(e @ (PullError::Store(_) | PullError::Unreachable { .. }))
                if attempt < ATTEMPTS =>
            {
                log::warn!("{d}: {e}; retrying ({attempt}/{ATTEMPTS})");
                last = Some(e);
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
    }
    bar.abandon();
    Err(last.unwrap_or_else(|| c.invalid("blob", "download failed".into())))
}

/// Pulls `r` into `store` and records it. `progress` draws bars on stderr.
pub fn pull(store: &Store, r: &Reference, progress: bool) -> Result<ImageRecord, PullError> {
    let c = Client::new(r);
    let (data, media, digest) = c.manifest(&r.registry_ref(), r.digest.as_ref())?;
    let value: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| c.invalid("manifest", format!("not JSON: {e}")))?;
    let media = value
        .get("mediaType")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .unwrap_or(media);
    let (mdata, mdigest) = if config::is_index(&media, &value) {
        let index: Index =
            serde_json::from_slice(&data).map_err(|e| c.invalid("index", e.to_string()))?;
        let Some(entry) = pick_platform(&index.manifests) else {
            return Err(PullError::Platform(
                r.to_string(),
                platforms(&index.manifests),
            ));
        };
        let (d, _, dg) = c.manifest(&entry.digest.to_string(), Some(&entry.digest))?;
        (d, dg)
    } else {
        (data, digest)
    };
    let m: Manifest = serde_json::from_slice(&mdata)
        .map_err(|e| c.invalid("manifest", format!("not an image manifest: {e}")))?;
    let bars = if progress {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    fetch_blob(&c, store, &m.config.digest, m.config.size, &bars)?;
    let cfg: ImageConfig = serde_json::from_slice(&store.read_blob(&m.config.digest)?)
        .map_err(|e| c.invalid("image config", e.to_string()))?;
    if !(cfg.os.is_empty() || cfg.os == config::OS)
        || !(cfg.architecture.is_empty() || cfg.architecture == config::ARCH)
    {
        return Err(PullError::Platform(
            r.to_string(),
            format!("{}/{}", cfg.os, cfg.architecture),
        ));
    }
    if cfg.rootfs.diff_ids.len() != m.layers.len() {
        return Err(c.invalid(
            "image config",
            "diff_ids do not match the manifest's layers".into(),
        ));
    }
    // Layers, PARALLEL at a time.
    let queue = Arc::new(Mutex::new(m.layers.clone()));
    let first_error: Arc<Mutex<Option<PullError>>> = Arc::new(Mutex::new(None));
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(m.layers.len().max(1)) {
            let (queue, first_error, c, bars) = (queue.clone(), first_error.clone(), &c, &bars);
            s.spawn(move || {
                loop {
                    if lock(&first_error).is_some() {
                        return;
                    }
                    let Some(l) = lock(&queue).pop() else { return };
                    if let Err(e) = fetch_blob(c, store, &l.digest, l.size, bars) {
                        lock(&first_error).get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = lock(&first_error).take() {
        return Err(e);
    }
    let manifest = store.put_bytes(&mdata, Some(&mdigest))?;
    let layers = m
        .layers
        .iter()
        .zip(&cfg.rootfs.diff_ids)
        .map(|(l, diff_id)| LayerRecord {
            digest: l.digest.clone(),
            diff_id: diff_id.clone(),
            media_type: l.media_type.clone(),
            size: l.size,
        })
        .collect();
    let rec = ImageRecord {
        reference: r.to_string(),
        manifest,
        config: m.config.digest.clone(),
        layers,
        added: now(),
    };
    store.add_image(rec.clone())?;
    Ok(rec)
}

/// The credentials helper's base64 form, for tests.
pub fn basic_auth(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2].1, "repository:a/b:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry""#).unwrap();
        assert_eq!((s.as_str(), p.len()), ("basic", 1));
    }

    #[test]
    fn plain_http_only_for_loopback_or_listed() {
        assert!(insecure("127.0.0.1:5000"));
        assert!(insecure("localhost"));
        assert!(!insecure("registry.example:5000"));
        assert_eq!(basic_auth("u", "p"), "dTpw");
    }
}
