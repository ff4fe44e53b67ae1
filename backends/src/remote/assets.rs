//! The upstream's Remote Asset API, for a site cache that chains its assets to the server behind it.
//! Calls go out with the upstream's instance name, the tier's token and deadline, and the same
//! retries as the CAS calls; NOT_FOUND is an answer (`None`), not an error.

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use asset::fetch_client::FetchClient;
use asset::push_client::PushClient;
use tonic::Code;

use super::RemoteStore;
use crate::client::MAX_MESSAGE;
use crate::error::{Result, StoreError};

impl RemoteStore {
    fn fetch(&self) -> FetchClient<crate::client::AuthChannel> {
        FetchClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn push(&self) -> PushClient<crate::client::AuthChannel> {
        PushClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// FetchBlob upstream; `None` when the upstream has no such asset.
    pub async fn fetch_blob(&self, mut message: asset::FetchBlobRequest) -> Result<Option<asset::FetchBlobResponse>> {
        message.instance_name = self.cfg.instance.clone();
        let answer = self
            .retry("FetchBlob", || {
                let request = self.request(message.clone(), self.cfg.timeout);
                async move { self.fetch().fetch_blob(request).await }
            })
            .await;
        not_found_is_none(answer.map(|r| r.into_inner()))
    }

    /// FetchDirectory upstream; `None` when the upstream has no such asset.
    pub async fn fetch_directory(&self, mut message: asset::FetchDirectoryRequest) -> Result<Option<asset::FetchDirectoryResponse>> {
        message.instance_name = self.cfg.instance.clone();
        let answer = self
            .retry("FetchDirectory", || {
                let request = self.request(message.clone(), self.cfg.timeout);
                async move { self.fetch().fetch_directory(request).await }
            })
            .await;
        not_found_is_none(answer.map(|r| r.into_inner()))
    }

    pub async fn push_blob(&self, mut message: asset::PushBlobRequest) -> Result<()> {
        message.instance_name = self.cfg.instance.clone();
        self.retry("PushBlob", || {
            let request = self.request(message.clone(), self.cfg.timeout);
            async move { self.push().push_blob(request).await }
        })
        .await?;
        Ok(())
    }

    pub async fn push_directory(&self, mut message: asset::PushDirectoryRequest) -> Result<()> {
        message.instance_name = self.cfg.instance.clone();
        self.retry("PushDirectory", || {
            let request = self.request(message.clone(), self.cfg.timeout);
            async move { self.push().push_directory(request).await }
        })
        .await?;
        Ok(())
    }
}

fn not_found_is_none<T>(answer: Result<T>) -> Result<Option<T>> {
    match answer {
        Ok(found) => Ok(Some(found)),
        Err(StoreError::Upstream { code, .. }) if code == Code::NotFound as i32 => Ok(None),
        Err(e) => Err(e),
    }
}
