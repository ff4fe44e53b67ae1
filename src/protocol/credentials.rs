//! The command-line flags every Strata client (`strata bot`, `strata bench`, `strata status` and
//! `strata admin`) takes to reach a server that wants TLS or credentials.

use std::path::PathBuf;

use strata_backends::client::ClientAuth;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct CredentialFlags {
    /// A PEM file of CA certificates to trust for a grpcs:// server, besides the system's roots.
    #[arg(long)]
    pub ca_certificate: Option<PathBuf>,
    /// A file holding the bearer token to call the server with.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A client certificate chain (PEM) for a server that asks for one; needs --client-key.
    #[arg(long, requires = "client_key")]
    pub client_certificate: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "client_certificate")]
    pub client_key: Option<PathBuf>,
}

impl CredentialFlags {
    /// Reads the files the flags name; the error names the flag.
    pub fn load(&self) -> Result<ClientAuth, String> {
        let read = |path: &Option<PathBuf>, flag: &str| -> Result<Option<Vec<u8>>, String> {
            let Some(path) = path else { return Ok(None) };
            std::fs::read(path).map(Some).map_err(|e| format!("--{flag} {}: {e}", path.display()))
        };
        let certificate = match (read(&self.client_certificate, "client-certificate")?, read(&self.client_key, "client-key")?) {
            (Some(certificate), Some(key)) => Some((certificate, key)),
            _ => None,
        };
        Ok(ClientAuth {
            ca_certificate: read(&self.ca_certificate, "ca-certificate")?,
            bearer_token: ClientAuth::token_from_file(self.token_file.as_deref()).map_err(|e| format!("--token-file: {e}"))?,
            certificate,
        })
    }
}
