//! Certificate verifiers that always use the CA bundle currently loaded by a
//! [`Reloading`], so a rotated bundle (an overlap bundle during a CA rotation)
//! applies to the next handshake without rebuilding any rustls configuration.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerified;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::ServerName;
use rustls_pki_types::UnixTime;

use super::Reloading;

fn no_verifier() -> rustls::Error {
    rustls::Error::General("no CA bundle loaded to verify certificates with".into())
}

/// Verifies clients with the current bundle. `mandatory` is fixed for the
/// port's life: whether a certificate is required is configuration, not material.
#[derive(Debug)]
pub struct CurrentClientVerifier {
    pub certs: Arc<Reloading>,
    pub mandatory: bool,
}

impl ClientCertVerifier for CurrentClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to borrow from the current bundle; clients here hold one
        // certificate each, which they send without hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let m = self.certs.current();
        let v = m.client_verifier.as_ref().ok_or_else(no_verifier)?;
        v.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let m = self.certs.current();
        let v = m.client_verifier.as_ref().ok_or_else(no_verifier)?;
        v.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let m = self.certs.current();
        let v = m.client_verifier.as_ref().ok_or_else(no_verifier)?;
        v.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Verifies servers with the current bundle (and the usual name check).
#[derive(Debug)]
pub struct CurrentServerVerifier {
    pub certs: Arc<Reloading>,
}

impl ServerCertVerifier for CurrentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let m = self.certs.current();
        let v = m.server_verifier.as_ref().ok_or_else(no_verifier)?;
        v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let m = self.certs.current();
        let v = m.server_verifier.as_ref().ok_or_else(no_verifier)?;
        v.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let m = self.certs.current();
        let v = m.server_verifier.as_ref().ok_or_else(no_verifier)?;
        v.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
