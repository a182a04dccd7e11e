//! `hull push`: an image from the store to a registry, as the distribution
//! spec describes: each blob the registry lacks (HEAD says) is uploaded in
//! one PUT (POST for a session, then PUT with the digest), a blob of another
//! repository of the same registry is mounted instead where the registry
//! offers it, then the manifest, with its own media type (OCI or Docker
//! v2s2, as the image was), under the tag. Auth as for pull.

use std::fs::File;
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
    /// Uploaded (bytes).
    Uploaded(u64),
}

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

    fn upload(&self, store: &Store, d: &Digest, from: Option<&str>) -> Result<BlobPush, PullError> {
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
        let mut put = self.absolute(&location);
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest={d}"));
        let path = store.blob_path(d);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
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
}

/// Pushes `rec` to `dest`; `progress` hears of each blob as it is done.
pub fn push(
    store: &Store,
    rec: &ImageRecord,
    dest: &Reference,
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
            c.upload(store, d, from.as_deref())?
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
