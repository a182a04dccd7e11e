//! The image a build step leaves: its layers and its OCI image config
//! (kept as JSON, so fields hull does not know pass through from the base
//! image), with the helpers the instructions use to change the config,
//! and the manifest that records the result in the store.

use std::collections::BTreeMap;

use hull_images::config::{self, OCI_MANIFEST};
use hull_images::{Digest, ImageRecord, LayerRecord, Reference, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An image while it is built (and in the layer cache).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageState {
    pub layers: Vec<LayerRecord>,
    /// The image config, as OCI's JSON.
    pub config: Value,
}

impl ImageState {
    /// FROM scratch.
    pub fn scratch() -> ImageState {
        ImageState {
            layers: Vec::new(),
            config: json!({
                "architecture": config::ARCH,
                "os": config::OS,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            }),
        }
    }

    /// The image `rec` of the store, as a base.
    pub fn from_record(rec: &ImageRecord, config: Value) -> ImageState {
        let mut s = ImageState {
            layers: rec.layers.clone(),
            config,
        };
        if !s.config.is_object() {
            s.config = ImageState::scratch().config;
        }
        if !s.config["config"].is_object() {
            s.config["config"] = json!({});
        }
        s
    }

    /// The run configuration (`config` in OCI's JSON).
    fn run(&mut self) -> &mut serde_json::Map<String, Value> {
        if !self.config["config"].is_object() {
            self.config["config"] = json!({});
        }
        self.config["config"]
            .as_object_mut()
            .expect("config is an object")
    }

    pub fn get_str(&self, key: &str) -> String {
        self.config["config"][key]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn set(&mut self, key: &str, v: Value) {
        self.run().insert(key.to_string(), v);
    }

    pub fn get_list(&self, key: &str) -> Option<Vec<String>> {
        self.config["config"][key].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
    }

    /// The environment as KEY=VALUE strings.
    pub fn env(&self) -> Vec<String> {
        self.get_list("Env").unwrap_or_default()
    }

    pub fn env_var(&self, name: &str) -> Option<String> {
        self.env().iter().find_map(|e| {
            e.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    /// Sets (or replaces) an environment variable.
    pub fn set_env(&mut self, key: &str, value: &str) {
        let mut env: Vec<String> = self
            .env()
            .into_iter()
            .filter(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key)
            .collect();
        env.push(format!("{key}={value}"));
        self.set("Env", json!(env));
    }

    /// Adds `key` to a map-like field (ExposedPorts, Volumes) or sets it in
    /// Labels.
    pub fn insert(&mut self, field: &str, key: &str, value: Value) {
        let run = self.run();
        let map = run.entry(field).or_insert_with(|| json!({}));
        if !map.is_object() {
            *map = json!({});
        }
        if let Some(m) = map.as_object_mut() {
            m.insert(key.to_string(), value);
        }
    }

    /// Records a step in the history; with `layer`, appends it.
    pub fn step(&mut self, created_by: &str, layer: Option<LayerRecord>) {
        let now = rfc3339(hull_images::store::now());
        // The image is as old as its last step (a cached rebuild keeps its id).
        self.config["created"] = json!(now);
        let mut h = json!({
            "created": now,
            "created_by": created_by,
            "comment": "hull build",
        });
        match layer {
            Some(l) => {
                if !self.config["rootfs"]["diff_ids"].is_array() {
                    self.config["rootfs"] = json!({"type": "layers", "diff_ids": []});
                }
                if let Some(ids) = self.config["rootfs"]["diff_ids"].as_array_mut() {
                    ids.push(json!(l.diff_id.to_string()));
                }
                self.layers.push(l);
            }
            None => h["empty_layer"] = json!(true),
        }
        if !self.config["history"].is_array() {
            self.config["history"] = json!([]);
        }
        if let Some(hist) = self.config["history"].as_array_mut() {
            hist.push(h);
        }
    }

    /// Writes config and manifest to the store and records the image as
    /// each of `tags` (none: only the blobs, found by id).
    pub fn commit(
        &self,
        store: &Store,
        tags: &[Reference],
    ) -> Result<Digest, hull_images::store::StoreError> {
        let config_bytes = serde_json::to_vec(&self.config).unwrap_or_default();
        let config_digest = store.put_bytes(&config_bytes, None)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(),
                "size": config_bytes.len(),
            },
            "layers": self.layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest.to_string(),
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest_digest =
            store.put_bytes(&serde_json::to_vec(&manifest).unwrap_or_default(), None)?;
        for t in tags {
            store.add_image(ImageRecord {
                reference: t.to_string(),
                manifest: manifest_digest.clone(),
                config: config_digest.clone(),
                layers: self.layers.clone(),
                added: hull_images::store::now(),
            })?;
        }
        Ok(config_digest)
    }
}

/// `secs` since the epoch as RFC 3339 in UTC.
pub fn rfc3339(secs: u64) -> String {
    let (date, h, mi, sec) = civil(secs);
    format!("{date}T{h:02}:{mi:02}:{sec:02}Z")
}

/// `secs` and `nanos` since the epoch as RFC 3339 in UTC with nanoseconds
/// (what runc's `state` gives as `created`).
pub fn rfc3339_nanos(secs: u64, nanos: u32) -> String {
    let (date, h, mi, sec) = civil(secs);
    format!("{date}T{h:02}:{mi:02}:{sec:02}.{nanos:09}Z")
}

/// `secs` since the epoch as a `YYYY-MM-DD` date and the hour, minute and
/// second of that day, in UTC.
fn civil(secs: u64) -> (String, u64, u64, u64) {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
    )
}

/// A Go duration (`30s`, `1m30s`, `500ms`, `2h`) in nanoseconds.
pub fn duration_ns(s: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0);
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let n: f64 = rest[..n_end].parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit: f64 = match &rest[..u_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[u_end..];
        total = total.checked_add((n * unit) as u64)?;
    }
    Some(total)
}

/// Labels as a sorted map (for comparisons and `image inspect`).
pub fn labels(config: &Value) -> BTreeMap<String, String> {
    config["config"]["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(duration_ns("30s"), Some(30_000_000_000));
        assert_eq!(duration_ns("1m30s"), Some(90_000_000_000));
        assert_eq!(duration_ns("500ms"), Some(500_000_000));
        assert_eq!(duration_ns("5x"), None);
        assert_eq!(duration_ns(""), None);
    }

    #[test]
    fn env_and_history() {
        let mut s = ImageState::scratch();
        s.set_env("A", "1");
        s.set_env("B", "2");
        s.set_env("A", "3");
        assert_eq!(s.env(), ["B=2", "A=3"]);
        assert_eq!(s.env_var("A").as_deref(), Some("3"));
        s.step("ENV A=3", None);
        assert_eq!(s.config["history"][0]["empty_layer"], json!(true));
        assert_eq!(s.config["history"][0]["created_by"], json!("ENV A=3"));
    }
}
