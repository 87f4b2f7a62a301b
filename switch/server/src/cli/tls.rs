//! `pinswitch tls init`: a test certificate authority, a certificate for the switch and one
//! client certificate per identity, as PEM files, so an operator can try mutual TLS in five
//! minutes (ops/trust.md). A production switch uses its own PKI; these keys are written 0600
//! and the authority's key stays beside them only so that more clients can be signed with
//! the same tools an operator already has (openssl).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// `pinswitch tls init` arguments.
#[derive(Args)]
pub(super) struct TlsInit {
    /// Where the files go (created; existing files are never overwritten).
    #[arg(long)]
    dir: PathBuf,
    /// The name clients reach the switch by (its certificate also names localhost and
    /// 127.0.0.1).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// A client identity to make a certificate for (its DNS name); repeat for each.
    #[arg(long = "client")]
    clients: Vec<String>,
}

/// Writes ca.pem, ca.key, switch.pem, switch.key and `<client>.pem` / `<client>.key`.
pub(super) fn init(args: TlsInit) -> anyhow::Result<std::process::ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(DnType::CommonName, "pinswitch test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write_new(&args.dir.join("ca.pem"), &ca_cert.pem())?;
    write_new(&args.dir.join("ca.key"), &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names = vec![args.server_name.clone()];
    for extra in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|name| name == extra) {
            names.push(extra.to_owned());
        }
    }
    leaf(&args.dir, "switch", names, ExtendedKeyUsagePurpose::ServerAuth, &issuer)?;
    for client in &args.clients {
        if client.is_empty() || client.contains(['/', '\\']) || client == "switch" || client == "ca"
        {
            bail!("{client:?} cannot name a client certificate file");
        }
        leaf(
            &args.dir,
            client,
            vec![client.clone()],
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        )?;
    }
    println!(
        "wrote a test CA, a switch certificate for {} and {} client certificate(s) to {}",
        args.server_name,
        args.clients.len(),
        args.dir.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// One end-entity certificate for `names` (an IP address becomes an IP name), signed by the CA.
fn leaf(
    dir: &Path,
    file: &str,
    names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> anyhow::Result<()> {
    let mut params = CertificateParams::new(names.clone())?;
    params.distinguished_name.push(DnType::CommonName, names[0].as_str());
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write_new(&dir.join(format!("{file}.pem")), &cert.pem())?;
    write_new(&dir.join(format!("{file}.key")), &key.serialize_pem())
}

fn write_new(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::keys::write_private(path, text.as_bytes())
}
