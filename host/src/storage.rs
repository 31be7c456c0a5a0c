//! Object storage: a local folder (the embedded default) or an S3-compatible bucket (AWS, MinIO,
//! SeaweedFS), behind `object_store`. Every location in a pipeline file — the checkpoint store,
//! a Parquet sink's folder, an Iceberg warehouse — is a path (relative to the pipeline file) or
//! an `s3://bucket/prefix` URL; the `object_store:` section says how to reach S3.

use std::{path::Path, sync::Arc};

use object_store::{
    ObjectStore, aws::AmazonS3Builder, local::LocalFileSystem, path::Path as ObjectPath,
    prefix::PrefixStore,
};
use serde::{Deserialize, Serialize};

use crate::pipeline::spec::ObjectStoreSpec;

/// How to reach S3, resolved from the pipeline file and the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Config {
    /// Endpoint URL, for S3-compatible servers (`None`: AWS).
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Path-style requests (`http://host/bucket/key`) instead of virtual-host style.
    pub path_style: bool,
    /// Whether plain HTTP is allowed.
    pub allow_http: bool,
    /// Credentials; `None` leaves them to the AWS environment (instance metadata, profiles).
    pub access_key_id: Option<String>,
    /// Secret of `access_key_id`.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl S3Config {
    /// The settings of `spec`, each falling back to its usual environment variable
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    pub fn resolve(spec: &ObjectStoreSpec) -> S3Config {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let endpoint = spec
            .endpoint
            .as_ref()
            .map(|e| e.value.clone())
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let custom = endpoint.is_some();
        let allow_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http:"));
        S3Config {
            region: spec
                .region
                .as_ref()
                .map(|r| r.value.clone())
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            // S3-compatible servers rarely resolve bucket subdomains; AWS prefers them.
            path_style: spec.path_style.as_ref().map_or(custom, |p| p.value),
            allow_http: spec.allow_http.as_ref().map_or(allow_http, |a| a.value),
            access_key_id: spec
                .access_key_id
                .as_ref()
                .map(|k| k.value.clone())
                .or_else(|| env("AWS_ACCESS_KEY_ID")),
            secret_access_key: spec
                .secret_access_key
                .as_ref()
                .map(|k| k.value.clone())
                .or_else(|| env("AWS_SECRET_ACCESS_KEY")),
            session_token: env("AWS_SESSION_TOKEN"),
            endpoint,
        }
    }

    /// A client for `bucket`.
    pub fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>, String> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_allow_http(self.allow_http)
            .with_virtual_hosted_style_request(!self.path_style);
        if let Some(endpoint) = &self.endpoint {
            b = b.with_endpoint(endpoint);
        }
        if let Some(key) = &self.access_key_id {
            b = b.with_access_key_id(key);
        }
        if let Some(secret) = &self.secret_access_key {
            b = b.with_secret_access_key(secret);
        }
        if let Some(token) = &self.session_token {
            b = b.with_token(token);
        }
        b.build()
            .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
            .map_err(|e| format!("cannot reach bucket `{bucket}`: {e}"))
    }
}

/// A location: a store rooted there, and how to name it.
#[derive(Clone)]
pub struct Location {
    /// The store; paths are relative to the location.
    pub store: Arc<dyn ObjectStore>,
    /// The location as a URL (`file:///…` or `s3://…`), without a trailing slash.
    pub url: String,
    /// The local folder, for a local location.
    pub local: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Whether `location` names an S3 bucket.
pub fn is_s3(location: &str) -> bool {
    location.starts_with("s3://") || location.starts_with("s3a://")
}

/// Splits `s3://bucket/some/prefix` into the bucket and the prefix.
pub fn split_s3(location: &str) -> Option<(&str, &str)> {
    let rest = location
        .strip_prefix("s3://")
        .or_else(|| location.strip_prefix("s3a://"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    (!bucket.is_empty()).then(|| (bucket, prefix.trim_matches('/')))
}

/// Opens `location` (an `s3://` URL, or a path relative to `dir`), creating a local folder.
pub fn open(location: &str, dir: &Path, s3: &S3Config) -> Result<Location, String> {
    if is_s3(location) {
        let (bucket, prefix) = split_s3(location)
            .ok_or_else(|| format!("`{location}` names no bucket: expected s3://BUCKET/PREFIX"))?;
        let store = s3.bucket(bucket)?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        let url = format!("s3://{bucket}/{prefix}");
        return Ok(Location {
            store,
            url: url.trim_end_matches('/').to_string(),
            local: None,
        });
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    let root = crate::pipeline::normalize(&dir.join(path));
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let store = LocalFileSystem::new_with_prefix(&root)
        .map_err(|e| format!("cannot open {}: {e}", root.display()))?;
    Ok(Location {
        store: Arc::new(store),
        url: format!("file://{}", root.display()),
        local: Some(root),
    })
}

/// Every object under `prefix` (`None`: the whole location).
pub async fn list(
    store: &dyn ObjectStore,
    prefix: Option<&ObjectPath>,
) -> Result<Vec<object_store::ObjectMeta>, object_store::Error> {
    use futures::TryStreamExt;
    store.list(prefix).try_collect().await
}

/// Removes the pieces of interrupted local uploads (`name#N` files, which `object_store` does not
/// list) under `folder`.
pub fn remove_local_staging(folder: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Ok(0);
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            removed += remove_local_staging(&path)?;
        } else if entry.file_name().to_string_lossy().contains('#') {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        assert_eq!(split_s3("s3://b/x/y/"), Some(("b", "x/y")));
        assert_eq!(split_s3("s3://b"), Some(("b", "")));
        assert_eq!(split_s3("s3:///x"), None);
        assert_eq!(split_s3("/tmp/x"), None);
    }

    #[test]
    fn a_custom_endpoint_defaults_to_path_style_and_http() {
        let spec: ObjectStoreSpec =
            serde_saphyr::from_str("endpoint: http://127.0.0.1:9000\n").unwrap();
        let c = S3Config::resolve(&spec);
        assert!(c.path_style && c.allow_http);
        let spec: ObjectStoreSpec =
            serde_saphyr::from_str("endpoint: http://127.0.0.1:9000\npath_style: false\n").unwrap();
        assert!(!S3Config::resolve(&spec).path_style);
    }
}
