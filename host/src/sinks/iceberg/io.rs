//! The Iceberg crate's file IO over `object_store`: one way to reach local folders and S3
//! buckets for the whole host, with the pipeline's `object_store:` settings (path-style access
//! included, which the crate's own S3 settings leave to virtual-host style).

use std::{
    collections::HashMap,
    ops::Range,
    sync::{Arc, Mutex, PoisonError},
};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use iceberg::{
    Error, ErrorKind,
    io::{
        FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
        StorageFactory,
    },
};
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, buffered::BufWriter, local::LocalFileSystem,
    path::Path as ObjectPath,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::storage::{S3Config, split_s3};

/// Builds [`ObjectStorage`] for the catalogs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectStorageFactory {
    /// How to reach S3.
    pub s3: S3Config,
}

#[typetag::serde(name = "weir-object-store")]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(ObjectStorage::new(self.s3.clone())))
    }
}

/// Iceberg's files (`s3://bucket/key`, `file:///path` or `/path`) through `object_store`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectStorage {
    s3: S3Config,
    /// One client per bucket, made on first use (`""`: the local file system).
    #[serde(skip)]
    stores: Arc<Mutex<HashMap<String, Arc<dyn ObjectStore>>>>,
}

fn error(what: &str, path: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Unexpected, format!("{what} {path}")).with_source(e)
}

impl ObjectStorage {
    /// Storage reaching S3 with `s3`.
    pub fn new(s3: S3Config) -> ObjectStorage {
        ObjectStorage {
            s3,
            stores: Arc::default(),
        }
    }

    /// The store holding `path`, and the path inside it.
    pub fn resolve(&self, path: &str) -> iceberg::Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        let (bucket, key) = match split_s3(path) {
            Some((bucket, key)) => (bucket, key.to_string()),
            None => {
                let local = path
                    .strip_prefix("file://")
                    .or_else(|| path.strip_prefix("file:"))
                    .unwrap_or(path);
                if !local.starts_with('/') {
                    return Err(Error::new(
                        ErrorKind::FeatureUnsupported,
                        format!("`{path}`: expected s3://BUCKET/KEY or an absolute file path"),
                    ));
                }
                ("", local.trim_start_matches('/').to_string())
            }
        };
        let mut stores = self.stores.lock().unwrap_or_else(PoisonError::into_inner);
        let store = match stores.get(bucket) {
            Some(store) => store.clone(),
            None => {
                let store: Arc<dyn ObjectStore> = if bucket.is_empty() {
                    Arc::new(LocalFileSystem::new())
                } else {
                    self.s3
                        .bucket(bucket)
                        .map_err(|e| Error::new(ErrorKind::Unexpected, e))?
                };
                stores.insert(bucket.to_string(), store.clone());
                store
            }
        };
        let key = ObjectPath::parse(&key).map_err(|e| error("invalid path", path, e))?;
        Ok((store, key))
    }
}

/// Reads ranges of one object.
struct ObjectRead {
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
}

#[async_trait::async_trait]
impl FileRead for ObjectRead {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.path, range)
            .await
            .map_err(|e| error("reading", self.path.as_ref(), e))
    }
}

/// Writes one object, uploading in parts as it grows; it appears only once closed.
struct ObjectWrite {
    writer: BufWriter,
    path: String,
}

#[async_trait::async_trait]
impl FileWrite for ObjectWrite {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.writer
            .put(bs)
            .await
            .map_err(|e| error("writing", &self.path, e))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        self.writer
            .shutdown()
            .await
            .map_err(|e| error("finishing", &self.path, e))
    }
}

#[async_trait::async_trait]
#[typetag::serde(name = "weir-object-storage")]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let (store, key) = self.resolve(path)?;
        match store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(error("checking", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let (store, key) = self.resolve(path)?;
        let meta = store
            .head(&key)
            .await
            .map_err(|e| error("reading", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let (store, key) = self.resolve(path)?;
        store
            .get(&key)
            .await
            .map_err(|e| error("reading", path, e))?
            .bytes()
            .await
            .map_err(|e| error("reading", path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let (store, path) = self.resolve(path)?;
        Ok(Box::new(ObjectRead { store, path }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        let (store, key) = self.resolve(path)?;
        store
            .put(&key, PutPayload::from(bs))
            .await
            .map_err(|e| error("writing", path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let (store, key) = self.resolve(path)?;
        Ok(Box::new(ObjectWrite {
            writer: BufWriter::new(store, key),
            path: path.to_string(),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let (store, key) = self.resolve(path)?;
        match store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(error("deleting", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let (store, key) = self.resolve(path)?;
        let objects: Vec<_> = store
            .list(Some(&key))
            .try_collect()
            .await
            .map_err(|e| error("listing", path, e))?;
        for object in objects {
            store
                .delete(&object.location)
                .await
                .map_err(|e| error("deleting", path, e))?;
        }
        Ok(())
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_files_are_written_read_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let storage = ObjectStorage::new(S3Config::default());
        let path = format!("file://{}/a/b.bin", dir.path().display());
        assert!(!storage.exists(&path).await.unwrap());
        let mut w = storage.writer(&path).await.unwrap();
        w.write(Bytes::from_static(b"hello ")).await.unwrap();
        w.write(Bytes::from_static(b"world")).await.unwrap();
        w.close().await.unwrap();
        assert_eq!(storage.metadata(&path).await.unwrap().size, 11);
        let r = storage.reader(&path).await.unwrap();
        assert_eq!(&r.read(6..11).await.unwrap()[..], b"world");
        storage
            .delete_prefix(&format!("{}/a", dir.path().display()))
            .await
            .unwrap();
        assert!(!storage.exists(&path).await.unwrap());
        assert!(storage.resolve("relative/path").is_err());
    }
}
