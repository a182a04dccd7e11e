//! `hull push`: an image from the store to a registry, as the distribution
//! spec describes: each blob the registry lacks (HEAD says) is uploaded
//! (POST for a session; then one PUT with the digest, or, for a blob larger
//! than the chunk size, PATCHes of one chunk each with its Content-Range
//! and a closing PUT with the digest), a blob of another repository of the
//! same registry is mounted instead where the registry offers it, then the
//! manifest, with its own media type (OCI or Docker v2s2, as the image
//! was), under the tag. Auth as for pull.
//!
//! A chunk that fails (a dropped connection, a 5xx) is resumed: hull asks
//! the registry how much of the upload it holds (GET on the session, its
//! `Range` header) and goes on from there, up to [`CHUNK_RETRIES`] times in
//! a row.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::{Client, PullError, lock};
use crate::store::{ImageRecord, Store};

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    /// The registry had it.
    Exists,
    /// Mounted from another repository of the registry.
    Mounted,
    /// Uploaded in one request (bytes).
    Uploaded(u64),
    /// Uploaded in chunks (bytes, chunks, chunks sent again after a failure).
    Chunked {
        bytes: u64,
        chunks: u64,
        resent: u64,
    },
}

/// Blobs larger than this go in chunks of this size, by default.
pub const DEFAULT_CHUNK_BYTES: u64 = 32 << 20;
/// Failed attempts in a row at one chunk before the push gives up.
pub const CHUNK_RETRIES: u32 = 3;

/// The result of a push: the manifest's digest, and each blob's fate.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub manifest: Digest,
    pub blobs: Vec<(Digest, BlobPush)>,
}

impl Client {
    /// Sends a request built by `make` with our credentials, authorizing
    /// once on a 401.
    fn send(
        &self,
        what: &str,
        make: &dyn Fn() -> ureq::Request,
        body: &dyn Fn(ureq::Request) -> Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<ureq::Response, PullError> {
        let mut authed = false;
        loop {
            let mut req = make();
            if let Some(t) = lock(&self.token).clone() {
                req = req.set("Authorization", &t);
            }
            match body(req).map_err(|e| *e) {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, resp)) if !authed => {
                    authed = true;
                    let challenge = resp.header("www-authenticate").unwrap_or("").to_string();
                    self.authorize(&challenge)?;
                }
                Err(e) => return Err(self.http_error(what, e)),
            }
        }
    }

    /// The absolute URL of a Location header.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            return location.to_string();
        }
        // base is scheme://host/v2/repo: keep scheme://host.
        let host_end = self
            .base
            .find("://")
            .and_then(|i| self.base[i + 3..].find('/').map(|j| i + 3 + j))
            .unwrap_or(self.base.len());
        format!("{}{location}", &self.base[..host_end])
    }

    fn has_blob(&self, d: &Digest) -> Result<bool, PullError> {
        let url = format!("{}/blobs/{d}", self.base);
        let what = format!("blob {}", d.short());
        match self.send(&what, &|| self.agent.head(&url), &|r| {
            r.call().map_err(Box::new)
        }) {
            Ok(_) => Ok(true),
            Err(PullError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn upload(
        &self,
        store: &Store,
        d: &Digest,
        from: Option<&str>,
        chunk: u64,
    ) -> Result<BlobPush, PullError> {
        let what = format!("blob {}", d.short());
        let mut url = format!("{}/blobs/uploads/", self.base);
        if let Some(repo) = from {
            url.push_str(&format!("?mount={d}&from={repo}"));
        }
        let resp = self.send(&what, &|| self.agent.post(&url), &|r| {
            r.send_bytes(&[]).map_err(Box::new)
        })?;
        if resp.status() == 201 {
            return Ok(BlobPush::Mounted);
        }
        let location = resp
            .header("location")
            .ok_or_else(|| self.invalid(&what, "no Location for the upload".into()))?
            .to_string();
        let path = store.blob_path(d);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if chunk > 0 && size > chunk {
            return self.upload_chunks(&what, &location, d, &path, size, chunk);
        }
        let put = with_digest(&self.absolute(&location), d);
        self.send(
            &what,
            &|| {
                self.agent
                    .put(&put)
                    .set("Content-Type", "application/octet-stream")
                    .set("Content-Length", &size.to_string())
                    .timeout(Duration::from_secs(3600))
            },
            &|r| {
                let f = File::open(&path).map_err(|e| Box::new(ureq::Error::from(e)))?;
                r.send(f).map_err(Box::new)
            },
        )?;
        Ok(BlobPush::Uploaded(size))
    }

    /// The chunked upload of the blob at `path` (`size` bytes) to the
    /// session at `location`: PATCH by PATCH, each chunk resumed from where
    /// the registry says the upload is when it fails, then the closing PUT.
    fn upload_chunks(
        &self,
        what: &str,
        location: &str,
        d: &Digest,
        path: &std::path::Path,
        size: u64,
        chunk: u64,
    ) -> Result<BlobPush, PullError> {
        let mut at = self.absolute(location);
        let mut offset = 0u64;
        let (mut chunks, mut resent, mut failures) = (0u64, 0u64, 0u32);
        while offset < size {
            let n = chunk.min(size - offset);
            let url = at.clone();
            let sent = self.send(
                what,
                &|| {
                    self.agent
                        .request("PATCH", &url)
                        .set("Content-Type", "application/octet-stream")
                        .set("Content-Range", &format!("{offset}-{}", offset + n - 1))
                        .set("Content-Length", &n.to_string())
                        .timeout(Duration::from_secs(3600))
                },
                &|r| {
                    let mut f = File::open(path).map_err(|e| Box::new(ureq::Error::from(e)))?;
                    f.seek(SeekFrom::Start(offset))
                        .map_err(|e| Box::new(ureq::Error::from(e)))?;
                    r.send(f.take(n)).map_err(Box::new)
                },
            );
            match sent {
                Ok(resp) => {
                    if let Some(l) = resp.header("location") {
                        at = self.absolute(l);
                    }
                    offset += n;
                    chunks += 1;
                    failures = 0;
                }
                Err(e) if failures < CHUNK_RETRIES && retryable(&e) => {
                    failures += 1;
                    resent += 1;
                    match self.upload_status(what, &at) {
                        Ok((loc, held)) => {
                            at = loc;
                            offset = held.min(size);
                        }
                        // The registry dropped the session (distribution's
                        // does when a cut chunk left part of itself behind):
                        // a new one, from the start.
                        Err(PullError::NotFound { .. }) => {
                            at = self.absolute(&self.new_session(what)?);
                            offset = 0;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let put = with_digest(&at, d);
        self.send(
            what,
            &|| self.agent.put(&put).set("Content-Length", "0"),
            &|r| r.send_bytes(&[]).map_err(Box::new),
        )?;
        Ok(BlobPush::Chunked {
            bytes: size,
            chunks,
            resent,
        })
    }

    /// A new upload session's Location.
    fn new_session(&self, what: &str) -> Result<String, PullError> {
        let url = format!("{}/blobs/uploads/", self.base);
        let resp = self.send(what, &|| self.agent.post(&url), &|r| {
            r.send_bytes(&[]).map_err(Box::new)
        })?;
        resp.header("location")
            .map(str::to_string)
            .ok_or_else(|| self.invalid(what, "no Location for the upload".into()))
    }

    /// Where an upload session is and how many bytes the registry holds
    /// (its `Range: 0-END` header, END inclusive; `0-0` read as nothing,
    /// the spec's answer for an empty session).
    fn upload_status(&self, what: &str, at: &str) -> Result<(String, u64), PullError> {
        let resp = self.send(what, &|| self.agent.get(at), &|r| {
            r.call().map_err(Box::new)
        })?;
        let loc = resp
            .header("location")
            .map_or_else(|| at.to_string(), |l| self.absolute(l));
        let held = resp
            .header("range")
            .and_then(|r| r.split_once('-'))
            .and_then(|(_, end)| end.trim().parse::<u64>().ok())
            .map_or(0, |end| if end == 0 { 0 } else { end + 1 });
        Ok((loc, held))
    }
}

/// `url` with `digest=D` added to its query.
fn with_digest(url: &str, d: &Digest) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={d}")
}

/// A failure worth resuming a chunk after: the connection, or the
/// registry's own trouble (5xx).
fn retryable(e: &PullError) -> bool {
    match e {
        PullError::Unreachable { .. } => true,
        PullError::Http { status, .. } => *status >= 500,
        _ => false,
    }
}

/// Pushes `rec` to `dest`; `progress` hears of each blob as it is done.
/// Blobs larger than `chunk` bytes go in chunks of that size (0: every
/// blob in one request).
pub fn push(
    store: &Store,
    rec: &ImageRecord,
    dest: &Reference,
    chunk: u64,
    progress: &dyn Fn(&Digest, BlobPush),
) -> Result<Pushed, PullError> {
    let c = Client::new(dest);
    // Another repository of the same registry that has the image (it was
    // pulled from there): blobs are mounted from it.
    let from = Reference::parse(&rec.reference)
        .ok()
        .filter(|r| r.registry == dest.registry && r.repository != dest.repository)
        .map(|r| r.repository);
    let mut blobs = Vec::new();
    for d in rec
        .layers
        .iter()
        .map(|l| &l.digest)
        .chain(std::iter::once(&rec.config))
    {
        let fate = if c.has_blob(d)? {
            BlobPush::Exists
        } else {
            c.upload(store, d, from.as_deref(), chunk)?
        };
        progress(d, fate);
        blobs.push((d.clone(), fate));
    }
    let manifest = store.read_blob(&rec.manifest)?;
    let media = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| crate::config::OCI_MANIFEST.to_string());
    let tag = dest.tag.clone().unwrap_or_else(|| "latest".into());
    let url = format!("{}/manifests/{tag}", c.base);
    c.send(
        &format!("manifest {}:{tag}", c.repository),
        &|| c.agent.put(&url).set("Content-Type", &media),
        &|r| r.send_bytes(&manifest).map_err(Box::new),
    )?;
    Ok(Pushed {
        manifest: rec.manifest.clone(),
        blobs,
    })
}
