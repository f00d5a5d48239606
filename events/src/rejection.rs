/// How a refused command should be reported, independent of transport. HTTP maps
/// `Invalid` to 400, `NotFound` to 404, `Conflict` to 409 and `Rule` to 422.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectionKind {
    /// The input itself is malformed; `field` names it (`items[3]`, `left_on`).
    Invalid { field: String },
    /// The command refers to something that does not exist.
    NotFound,
    /// The input is well-formed but a domain rule refuses it.
    Rule { field: Option<String> },
    /// The thing to create already exists.
    Conflict,
}

/// Implemented by every aggregate error so callers can branch without string matching.
pub trait Rejection: std::error::Error {
    fn kind(&self) -> RejectionKind;
}
