//! Deletes, plain and conditional.

use s3dock_core::names::ObjectKey;
use s3dock_core::store::{ETag, StoreError};

use super::S3Store;
use crate::error::{error_code, status_of};

impl S3Store {
    pub(super) async fn delete_object(&self, key: &ObjectKey) -> Result<(), StoreError> {
        match self.client.delete_object().bucket(&self.cfg.bucket).key(self.full_key(key)).send().await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) && error_code(&e) != Some("NoSuchBucket") => Ok(()),
            Err(e) => Err(self.ctx.map("deleting", key.as_str(), e)),
        }
    }

    pub(super) async fn delete_object_if(&self, key: &ObjectKey, etag: &ETag) -> Result<(), StoreError> {
        // AWS checks `If-Match` on DeleteObject atomically with the delete. Emulators may not
        // (LocalStack and moto ignore it), so look first as well: a HEAD-then-delete window
        // remains there, and only there.
        match self.head_object(key).await? {
            None => return Err(StoreError::NotFound { key: key.to_string() }),
            Some(info) if &info.etag != etag => return Err(StoreError::PreconditionFailed { key: key.to_string() }),
            Some(_) => {}
        }
        let sent =
            self.client.delete_object().bucket(&self.cfg.bucket).key(self.full_key(key)).if_match(&etag.0).send().await;
        match sent {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(412) => Err(StoreError::PreconditionFailed { key: key.to_string() }),
            Err(e) if status_of(&e) == Some(404) && error_code(&e) != Some("NoSuchBucket") => {
                Err(StoreError::NotFound { key: key.to_string() })
            }
            // A server that does not know conditional deletes may refuse the header: the HEAD
            // above already compared the ETag, so delete without it.
            Err(e) if status_of(&e) == Some(501) => self.delete_object(key).await,
            Err(e) => Err(self.ctx.map("deleting", key.as_str(), e)),
        }
    }
}
