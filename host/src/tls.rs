//! TLS for the proxy's HTTPS listener and the management API: certificates from files, reloaded
//! when they change, and what a client's certificate says about who it is.

/// What the TLS layer learned about a client from the certificate it presented, once that
/// certificate was verified against the configured certificate authorities. Absent on plain HTTP,
/// and when the client presented no certificate (or one that did not verify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SHA-256 of the client's own (end-entity) certificate, DER.
    pub fingerprint_sha256: [u8; 32],
    /// SHA-1 of the same certificate: only to match clients imported from OpenHIM, which records
    /// SHA-1 fingerprints.
    pub fingerprint_sha1: [u8; 20],
    /// SHA-256 of each certificate authority the client's certificate chains to, nearest first
    /// (the intermediates it presented, then the configured CA that anchors the chain): OpenHIM's
    /// "in-chain" lookup identifies a client by the authority that issued its certificate.
    pub issuers_sha256: Vec<[u8; 32]>,
}
