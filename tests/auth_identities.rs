//! The other two kinds of identity: JWT bearer tokens (RS256, ES256 and EdDSA keys from PEM files
//! and a JWKS; expired, wrongly addressed and wrongly signed tokens refused) and TLS client
//! certificates signed by the configured CA (the identity is the certificate's subject).

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::matrix;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use strata::protocol::{AuthChannel, ClientAuth};
use tonic::Code;

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "strata-test";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A signed token; `exp` relative to now.
fn jwt(alg: Algorithm, key: &KeyPair, kid: Option<&str>, sub: &str, iss: &str, aud: &str, exp_in: i64) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let claims = serde_json::json!({ "sub": sub, "iss": iss, "aud": aud, "exp": now() as i64 + exp_in, "iat": now() });
    let pem = key.serialize_pem();
    let encoding = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()),
    }
    .unwrap();
    jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
}

fn channel(addr: std::net::SocketAddr, scheme: &str, auth: ClientAuth) -> AuthChannel {
    strata::protocol::channel(&format!("{scheme}://{addr}"), &auth, std::time::Duration::from_secs(5)).unwrap()
}

fn bearer(token: &str) -> ClientAuth {
    ClientAuth { bearer_token: Some(token.to_string()), ..Default::default() }
}

async fn find_missing(ch: AuthChannel) -> Result<(), tonic::Status> {
    let request = reapi::FindMissingBlobsRequest { blob_digests: vec![sha256(b"x")], ..Default::default() };
    ContentAddressableStorageClient::new(ch).find_missing_blobs(request).await.map(|_| ())
}

async fn batch_update(ch: AuthChannel) -> Result<(), tonic::Status> {
    let data = b"identity blob".to_vec();
    let requests = vec![reapi::batch_update_blobs_request::Request { digest: Some(sha256(&data)), data, ..Default::default() }];
    ContentAddressableStorageClient::new(ch).batch_update_blobs(reapi::BatchUpdateBlobsRequest { requests, ..Default::default() }).await.map(|_| ())
}

fn code(result: Result<(), tonic::Status>) -> Code {
    result.map_or_else(|s| s.code(), |_| Code::Ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_verified_against_the_configured_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let rsa = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let stranger = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(tmp.path().join("rsa.pem"), rsa.public_key_pem()).unwrap();
    std::fs::write(tmp.path().join("ec.pem"), ec.public_key_pem()).unwrap();
    // The Ed25519 key comes as a JWKS entry, chosen by its kid.
    use base64::Engine as _;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ed.public_key_raw());
    let jwks = serde_json::json!({ "keys": [ { "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "ed-1", "alg": "EdDSA" } ] });
    std::fs::write(tmp.path().join("keys.json"), jwks.to_string()).unwrap();
    let mut config = format!(
        "{}auth:\n  jwt: {{ issuer: \"{ISSUER}\", audience: {AUDIENCE}, key_files: [{:?}, {:?}], jwks_file: {:?}, leeway: 0s }}\n  identities:\n    - {{ name: builder, jwt_subject: builder@example, permissions: [read] }}\n",
        matrix::SERVICES,
        tmp.path().join("rsa.pem"),
        tmp.path().join("ec.pem"),
        tmp.path().join("keys.json"),
    );
    for (name, permission) in matrix::SINGLE {
        config += &format!("    - {{ name: {name}, jwt_subject: {name}@example, permissions: [{permission}] }}\n");
    }
    let server = TestServer::start_in(&config, &tmp.path().join("data")).await;
    let good = [
        jwt(Algorithm::RS256, &rsa, None, "builder@example", ISSUER, AUDIENCE, 300),
        jwt(Algorithm::ES256, &ec, None, "builder@example", ISSUER, AUDIENCE, 300),
        jwt(Algorithm::EdDSA, &ed, Some("ed-1"), "builder@example", ISSUER, AUDIENCE, 300),
    ];
    for token in &good {
        find_missing(channel(server.addr, "grpc", bearer(token))).await.unwrap();
        // A valid token gives its identity's permissions, no more.
        assert_eq!(code(batch_update(channel(server.addr, "grpc", bearer(token))).await), Code::PermissionDenied);
    }
    let bad = [
        ("expired", jwt(Algorithm::ES256, &ec, None, "builder@example", ISSUER, AUDIENCE, -60)),
        ("wrong audience", jwt(Algorithm::ES256, &ec, None, "builder@example", ISSUER, "someone-else", 300)),
        ("wrong issuer", jwt(Algorithm::ES256, &ec, None, "builder@example", "https://evil.test", AUDIENCE, 300)),
        ("signed by another key", jwt(Algorithm::ES256, &stranger, None, "builder@example", ISSUER, AUDIENCE, 300)),
        ("unknown kid", jwt(Algorithm::EdDSA, &ed, Some("ed-2"), "builder@example", ISSUER, AUDIENCE, 300)),
    ];
    for (why, token) in &bad {
        let status = find_missing(channel(server.addr, "grpc", bearer(token))).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{why}: {}", status.message());
        assert!(status.message().len() < 300, "{why}: {}", status.message());
    }
    // A token whose signature was swapped for an HMAC made with the public key is not accepted.
    let parts: Vec<&str> = good[1].split('.').collect();
    let hs_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let forged = format!("{hs_header}.{}.{}", parts[1], parts[2]);
    let status = find_missing(channel(server.addr, "grpc", bearer(&forged))).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("HS256"), "{}", status.message());
    // A valid token for a subject that is no identity here.
    let nobody = jwt(Algorithm::ES256, &ec, None, "nobody@example", ISSUER, AUDIENCE, 300);
    assert_eq!(code(find_missing(channel(server.addr, "grpc", bearer(&nobody))).await), Code::PermissionDenied);
    // Garbage in the header.
    assert_eq!(code(find_missing(channel(server.addr, "grpc", bearer("a.b.c"))).await), Code::Unauthenticated);
    // Every permission against every RPC family, with JWT identities.
    let token_of = |name: &str| jwt(Algorithm::ES256, &ec, None, &format!("{name}@example"), ISSUER, AUDIENCE, 300);
    matrix::check(|name| channel(server.addr, "grpc", bearer(&token_of(name))), "jwt").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_signed_by_the_ca_are_identities() {
    let tmp = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Strata test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&server_key, &ca).unwrap();
    let client = |cn: &str, issuer: &CertifiedIssuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.distinguished_name.push(DnType::OrganizationName, "Example");
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    };
    let write = |name: &str, text: String| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca_pem, cert, key) = (write("ca.pem", ca.pem()), write("server.pem", server_cert.pem()), write("server.key", server_key.serialize_pem()));
    let mut config = format!(
        "{}tls: {{ certificate: {cert:?}, key: {key:?}, client_ca: {ca_pem:?} }}\nauth:\n  identities:\n    - {{ name: ci, certificate_subject: \"CN=ci, O=Example\", permissions: [read, write] }}\n",
        matrix::SERVICES
    );
    for (name, permission) in matrix::SINGLE {
        config += &format!("    - {{ name: {name}-cert, certificate_subject: \"CN={name},O=Example\", permissions: [{permission}] }}\n");
    }
    let server = TestServer::start_in(&config, &tmp.path().join("data")).await;
    let trust = ca.pem().into_bytes();
    let with = |certificate: Option<(Vec<u8>, Vec<u8>)>| ClientAuth { ca_certificate: Some(trust.clone()), certificate, ..Default::default() };

    batch_update(channel(server.addr, "grpcs", with(Some(client("ci", &ca))))).await.unwrap();
    // Signed by the CA but not an identity here.
    assert_eq!(code(find_missing(channel(server.addr, "grpcs", with(Some(client("intruder", &ca))))).await), Code::PermissionDenied);
    // No certificate: anonymous, who may do nothing here.
    assert_eq!(code(find_missing(channel(server.addr, "grpcs", with(None))).await), Code::Unauthenticated);
    // The right name from another CA does not even get a connection.
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_ca = CertifiedIssuer::self_signed(other_params, KeyPair::generate().unwrap()).unwrap();
    let refused = code(find_missing(channel(server.addr, "grpcs", with(Some(client("ci", &other_ca))))).await);
    // The handshake fails; the channel reports it as one of these, depending on timing.
    assert!(matches!(refused, Code::Unavailable | Code::Unknown | Code::Cancelled), "{refused:?}");
    // Every permission against every RPC family, with certificate identities.
    let certificates: std::collections::HashMap<&str, (Vec<u8>, Vec<u8>)> = matrix::SINGLE.iter().map(|(name, _)| (*name, client(name, &ca))).collect();
    matrix::check(|name| channel(server.addr, "grpcs", with(Some(certificates[name].clone()))), "certificate").await;
}
