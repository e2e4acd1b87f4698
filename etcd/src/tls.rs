//! The TLS side of the settings: PEM files read into ureq's TLS config,
//! with each fault named by its key, and the files' stamps, to notice a
//! certificate renewed on disk.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use crate::{Error, Options, Result};

/// What identifies one version of a file: a renewal that writes a new
/// file and renames it changes the inode, one written in place the time
/// or size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

/// The stamps of the TLS files of `opts` (a missing file has none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Stamps(Vec<Option<Stamp>>);

impl Stamps {
    pub(crate) fn of(opts: &Options) -> Stamps {
        Stamps(
            files(opts)
                .map(|p| {
                    std::fs::metadata(p).ok().map(|m| Stamp {
                        ino: m.ino(),
                        mtime_ns: i128::from(m.mtime()) * 1_000_000_000
                            + i128::from(m.mtime_nsec()),
                        len: m.len(),
                    })
                })
                .collect(),
        )
    }
}

fn files(opts: &Options) -> impl Iterator<Item = &PathBuf> {
    [&opts.ca_file, &opts.cert_file, &opts.key_file]
        .into_iter()
        .flatten()
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::config(key, format!("cannot read {}: {e}", path.display())))
}

/// Every certificate of a PEM file; none is a fault of `key`.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::config(key, format!("{} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Error::config(
            key,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

/// The key of a PEM file, as rustls and as ureq take it.
fn private_key(path: &Path) -> Result<(PrivateKeyDer<'static>, PrivateKey<'static>)> {
    let pem = read("keyFile", path)?;
    let none = |e: &dyn std::fmt::Display| {
        Error::config(
            "keyFile",
            format!("{} holds no PEM private key: {e}", path.display()),
        )
    };
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| none(&e))?;
    let key = PrivateKey::from_pem(&pem).map_err(|e| none(&e))?;
    Ok((der, key))
}

/// The system's trusted roots (Debian's ca-certificates; SSL_CERT_FILE
/// and SSL_CERT_DIR are honoured, as by OpenSSL).
fn system_roots() -> Result<Vec<CertificateDer<'static>>> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(Error::config(
            "caFile",
            format!(
                "not given, and the system has no trusted roots{why}: https:// endpoints need \
                 the CA that signed etcd's certificate"
            ),
        ));
    }
    Ok(found.certs)
}

/// The client certificate (chain) and its key, refused unless the key is
/// the certificate's.
fn client_cert(cert: &Path, key: &Path) -> Result<ClientCert> {
    let chain = certificates("certFile", cert)?;
    let (key_der, key_pem) = private_key(key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
        Error::config(
            "keyFile",
            format!("{}: unusable private key: {e}", key.display()),
        )
    })?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|_| {
            Error::config(
                "keyFile",
                format!(
                    "{} is not the key of certFile's certificate {}",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
    let chain: Vec<Certificate<'static>> = chain
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    Ok(ClientCert::new_with_certs(&chain, key_pem))
}

/// When the client certificate of `opts` (the first of its chain) stops
/// being valid: (Unix seconds, as text). None without one, or if it does
/// not parse (that is for the TLS config to refuse).
pub(crate) fn client_not_after(opts: &Options) -> Option<(i64, String)> {
    let cert = certificates("certFile", opts.cert_file.as_deref()?).ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.first()?.as_ref()).ok()?;
    let t = parsed.validity().not_after;
    Some((t.timestamp(), t.to_string()))
}

/// ureq's TLS config for `opts` (https endpoints), reading its files.
pub(crate) fn config(opts: &Options) -> Result<TlsConfig> {
    let roots = match &opts.ca_file {
        Some(ca) => certificates("caFile", ca)?,
        None => system_roots()?,
    };
    let roots: Vec<Certificate<'static>> = roots
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let client = match (&opts.cert_file, &opts.key_file) {
        (Some(c), Some(k)) => Some(client_cert(c, k)?),
        _ => None,
    };
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .client_cert(client)
        .build())
}
