//! Who may call the hub's admin API (gRPC and HTTP/JSON), and what they may do.
//!
//! Callers present bearer tokens. The hub never stores a token: its tokens file (`tokens.toml`,
//! named in `hub.toml`) lists each token's SHA-256 hash with a name (for logs and audit), a
//! [`Role`] and the workspaces it may touch. Anything not listed is refused (default deny).
//!
//! - [`new_token`] makes a token and the entry to paste into the file (`mosaic-hub token new`).
//! - [`TokenSet`] is one validated copy of the file; [`TokenSet::authenticate`] turns a
//!   presented token into a [`Principal`].
//! - [`Principal::may`] decides one operation on one workspace: [`Decision::Allow`],
//!   [`Decision::Forbidden`] (the role lacks the operation) or [`Decision::NotFound`] (the
//!   workspace is not the caller's, answered exactly like a missing id so no caller learns what
//!   other workspaces hold).
//! - [`TokenStore`] holds the current set, reloads it without a restart ([`TokenStore::reload`],
//!   [`watch_for_changes`]) and tells open streams when their token went away
//!   ([`TokenStore::revoked`]).
//!
//! Plain SHA-256 (no salt, no slow KDF) is enough because tokens made by [`new_token`] carry 256
//! random bits: nobody can search that space, whereas a slow hash would cost every request. A
//! hand-made low-entropy token would not have that property, which is why the CLI makes them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use mosaic_shared::reload::{Fingerprint, Hangups, fingerprint};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use mosaic_shared::ids::WorkspaceId;
use mosaic_shared::tls::{Role as TlsRole, SpiffeId};

/// Presented tokens longer than this are refused before hashing, so a hostile client cannot
/// make the hub hash megabytes per request. Generated tokens are [`TOKEN_LEN`] bytes; the slack
/// leaves room for tokens minted by another secret manager.
pub const MAX_TOKEN_LEN: usize = 256;

/// What every generated token starts with: lets secret scanners and humans recognise a leaked
/// Mosaic token, and lets the config loader spot a token pasted where its hash belongs.
pub const TOKEN_PREFIX: &str = "mosaic_";

/// Random bytes in a generated token.
const TOKEN_RANDOM_BYTES: usize = 32;

/// Length of a generated token: the prefix and 64 lowercase hex digits (71 bytes).
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 2 * TOKEN_RANDOM_BYTES;

/// How often [`watch_for_changes`] looks at the tokens file.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Names, hashes, roles, operations
// ---------------------------------------------------------------------------------------------

/// A token's name, as it appears in logs and in the audit trail. Same rule as the project's ids
/// (ASCII letters, digits, '.', '_', '-', starting with a letter or digit, 1..=64 bytes) so it
/// can go into log lines and audit records unescaped.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenName(String);

impl TokenName {
    pub const MAX_LEN: usize = 64;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TokenName {
    type Err = TokenNameError;

    fn from_str(s: &str) -> Result<Self, TokenNameError> {
        if s.is_empty() {
            return Err(TokenNameError::Empty);
        }
        if s.len() > Self::MAX_LEN {
            return Err(TokenNameError::TooLong {
                len: s.len(),
                max: Self::MAX_LEN,
            });
        }
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !first_ok || !rest_ok {
            return Err(TokenNameError::BadCharacter(s.chars().take(80).collect()));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for TokenName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenNameError {
    #[error("a token name must not be empty; name the token after who uses it, e.g. \"ci\"")]
    Empty,
    #[error("a token name is {len} characters long; use at most {max}")]
    TooLong { len: usize, max: usize },
    #[error(
        "token name {0:?} has a character that is not allowed; use ASCII letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadCharacter(String),
}

/// The SHA-256 of a token's bytes, written `sha256:<64 hex digits>` in the tokens file.
///
/// The derived `PartialEq` is not constant-time; it serves duplicate detection and
/// [`TokenStore::still_valid`], which compare hashes the hub already holds. Only
/// [`TokenSet::authenticate`] compares against a hash derived from client input, and it uses
/// [`TokenHash::ct_eq`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub const PREFIX: &'static str = "sha256:";

    /// The hash of `token`'s UTF-8 bytes, exactly as presented (prefix included).
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Equality whose running time does not depend on where the hashes differ: every byte pair
    /// is XORed and the differences ORed together, then tested once.
    fn ct_eq(&self, other: &TokenHash) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        // black_box hides `diff`'s provenance from the optimiser, which could otherwise turn
        // the fold back into an early-exit comparison.
        std::hint::black_box(diff) == 0
    }
}

impl FromStr for TokenHash {
    type Err = TokenHashError;

    fn from_str(s: &str) -> Result<Self, TokenHashError> {
        // Checked first: a token pasted into the hash field must be called out (and must not be
        // echoed back into a log, which is why no error here quotes the value).
        if s.starts_with(TOKEN_PREFIX) {
            return Err(TokenHashError::TokenNotHash);
        }
        let hex_part = s
            .strip_prefix(Self::PREFIX)
            .ok_or(TokenHashError::MissingPrefix)?;
        if hex_part.len() != 64 {
            return Err(TokenHashError::WrongLength {
                len: hex_part.len(),
            });
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| TokenHashError::NotHex)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(self.0))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenHashError {
    #[error(
        "this is a token, not its hash; never store tokens in the file: put the \"sha256:…\" line that `mosaic-hub token new` printed, and treat this token as leaked (make a new one)"
    )]
    TokenNotHash,
    #[error(
        "must start with \"sha256:\" followed by 64 hex digits, as printed by `mosaic-hub token new`"
    )]
    MissingPrefix,
    #[error(
        "has {len} characters after \"sha256:\" but a SHA-256 hash has 64 hex digits; copy the whole hash from `mosaic-hub token new`"
    )]
    WrongLength { len: usize },
    #[error("has a character after \"sha256:\" that is not a hex digit; use only 0-9 and a-f")]
    NotHex,
}

/// What a token may do, from least to most. The order matters: a role may do everything the
/// roles below it may (see [`Operation::least_role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: list spokes and agents, agent status, watch streams, queue statistics.
    Viewer,
    /// A viewer that may also spawn and kill agents in its workspaces.
    Operator,
    /// Everything, including the spoke-wide queue controls and the audit trail. An admin's
    /// token always covers every workspace (see [`GrantError::AdminNeedsAllWorkspaces`]).
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether the role includes `op`, regardless of workspaces.
    pub fn allows(self, op: Operation) -> bool {
        self >= op.least_role()
    }
}

impl FromStr for Role {
    type Err = RoleError;

    fn from_str(s: &str) -> Result<Self, RoleError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| RoleError(s.chars().take(80).collect()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; use admin, operator or viewer")]
pub struct RoleError(String);

/// The admin API's operations, as far as authorization is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    ListSpokes,
    Spawn,
    GetStatus,
    Kill,
    ListAgents,
    Watch,
    QueueStats,
    PauseQueue,
    ResumeQueue,
    Audit,
}

impl Operation {
    pub const ALL: [Operation; 10] = [
        Operation::ListSpokes,
        Operation::Spawn,
        Operation::GetStatus,
        Operation::Kill,
        Operation::ListAgents,
        Operation::Watch,
        Operation::QueueStats,
        Operation::PauseQueue,
        Operation::ResumeQueue,
        Operation::Audit,
    ];

    /// The name used in logs and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::ListSpokes => "list_spokes",
            Operation::Spawn => "spawn",
            Operation::GetStatus => "get_status",
            Operation::Kill => "kill",
            Operation::ListAgents => "list_agents",
            Operation::Watch => "watch",
            Operation::QueueStats => "queue_stats",
            Operation::PauseQueue => "pause_queue",
            Operation::ResumeQueue => "resume_queue",
            Operation::Audit => "audit",
        }
    }

    /// The least role that may perform the operation. Written as an exhaustive match so that
    /// adding an operation does not compile until someone decides who may do it.
    pub fn least_role(self) -> Role {
        match self {
            Operation::ListSpokes
            | Operation::GetStatus
            | Operation::ListAgents
            | Operation::Watch
            | Operation::QueueStats => Role::Viewer,
            Operation::Spawn | Operation::Kill => Role::Operator,
            Operation::PauseQueue | Operation::ResumeQueue | Operation::Audit => Role::Admin,
        }
    }

    /// Whether the operation's effect or output spans every workspace: pausing a queue stops
    /// every workspace's jobs on the spoke, and the audit trail records every workspace.
    pub fn spans_all_workspaces(self) -> bool {
        matches!(
            self,
            Operation::PauseQueue | Operation::ResumeQueue | Operation::Audit
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to "may this caller do this here?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    Allow,
    /// The caller's role lacks the operation (gRPC `PERMISSION_DENIED`, HTTP 403).
    Forbidden,
    /// The workspace is not one the caller may see. Answer exactly as for an id that does not
    /// exist (gRPC `NOT_FOUND`, HTTP 404, same message), so callers cannot probe other
    /// workspaces.
    NotFound,
}

impl Decision {
    pub fn is_allowed(self) -> bool {
        self == Decision::Allow
    }
}

// ---------------------------------------------------------------------------------------------
// Workspace scopes and grants
// ---------------------------------------------------------------------------------------------

/// The workspaces a token may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkspaceScope {
    /// `workspaces = "*"`.
    All,
    /// `workspaces = ["team-a", …]`; never empty when built by [`WorkspaceScope::parse`].
    Only(BTreeSet<WorkspaceId>),
}

impl WorkspaceScope {
    /// Builds a scope from the strings a config file or the CLI's `--workspace` flags give:
    /// `["*"]` alone means all workspaces, otherwise each item must be a workspace id, listed
    /// once. Errors carry the item's index so the config loader can name `workspaces[i]`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, GrantError> {
        let items: Vec<&str> = items.into_iter().collect();
        if items.is_empty() {
            return Err(GrantError::Empty);
        }
        if items.contains(&"*") {
            return if items.len() == 1 {
                Ok(WorkspaceScope::All)
            } else {
                Err(GrantError::StarMixed)
            };
        }
        let mut set = BTreeSet::new();
        for (index, item) in items.into_iter().enumerate() {
            let ws: WorkspaceId = item.parse().map_err(|e| GrantError::BadWorkspace {
                index,
                message: format!("{e}"),
            })?;
            if set.contains(&ws) {
                return Err(GrantError::Duplicate {
                    index,
                    workspace: ws,
                });
            }
            set.insert(ws);
        }
        Ok(WorkspaceScope::Only(set))
    }

    pub fn contains(&self, workspace: &WorkspaceId) -> bool {
        match self {
            WorkspaceScope::All => true,
            WorkspaceScope::Only(set) => set.contains(workspace),
        }
    }

    pub fn is_all(&self) -> bool {
        matches!(self, WorkspaceScope::All)
    }

    /// The value of `workspaces = …` in a tokens file entry. Workspace ids cannot contain
    /// quotes or backslashes, so plain quoting is valid TOML.
    fn to_toml(&self) -> String {
        match self {
            WorkspaceScope::All => "\"*\"".to_owned(),
            WorkspaceScope::Only(set) => {
                let items: Vec<String> = set.iter().map(|w| format!("\"{w}\"")).collect();
                format!("[{}]", items.join(", "))
            }
        }
    }
}

impl fmt::Display for WorkspaceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkspaceScope::All => f.write_str("*"),
            WorkspaceScope::Only(set) => {
                let items: Vec<&str> = set.iter().map(WorkspaceId::as_str).collect();
                f.write_str(&items.join(","))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("no workspace listed; list the workspaces the token may touch, or use \"*\" for all")]
    Empty,
    #[error(
        "\"*\" already means every workspace; use either \"*\" alone or a list of workspace ids"
    )]
    StarMixed,
    #[error("{message}")]
    BadWorkspace { index: usize, message: String },
    #[error("workspace {workspace} is listed twice; list each workspace once")]
    Duplicate {
        index: usize,
        workspace: WorkspaceId,
    },
    #[error(
        "role admin pauses and resumes whole queues and reads every workspace's audit trail, so it needs workspaces = \"*\"; use role operator to confine a token to some workspaces"
    )]
    AdminNeedsAllWorkspaces,
}

impl GrantError {
    /// The position of the offending item in the workspace list, when one item is at fault.
    pub fn index(&self) -> Option<usize> {
        match self {
            GrantError::BadWorkspace { index, .. } | GrantError::Duplicate { index, .. } => {
                Some(*index)
            }
            _ => None,
        }
    }
}

/// Refuses role/scope combinations that would contradict each other: an admin confined to some
/// workspaces could still pause every workspace's queue, so it is not allowed at all.
fn check_grant(role: Role, scope: &WorkspaceScope) -> Result<(), GrantError> {
    if role == Role::Admin && !scope.is_all() {
        return Err(GrantError::AdminNeedsAllWorkspaces);
    }
    Ok(())
}

/// One entry of the tokens file, validated: a token (by its hash) or a client certificate
/// (by its identity), exactly one of the two.
#[derive(Debug, PartialEq, Eq)]
struct Grant {
    name: TokenName,
    hash: Option<TokenHash>,
    /// `spiffe://<trust-domain>/admin/<name>` of a client certificate.
    identity: Option<String>,
    role: Role,
    scope: WorkspaceScope,
}

/// An authenticated caller: the token entry that matched. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Principal(Arc<Grant>);

impl Principal {
    /// The token's name, for logs and audit records.
    pub fn name(&self) -> &TokenName {
        &self.0.name
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    /// The workspaces whose agents, events and statistics the caller may see; filter lists and
    /// watch streams with [`WorkspaceScope::contains`].
    pub fn visible_workspaces(&self) -> &WorkspaceScope {
        &self.0.scope
    }

    /// May the caller perform `op` on `workspace`?
    ///
    /// Pass the workspace whenever the operation targets one: the workspace of a spawn, or of
    /// the agent being queried, killed or watched (look the agent up first; if it does not
    /// exist, answer not-found as usual). Pass `None` for operations that target no workspace
    /// (list spokes, queue statistics, queue pause/resume, audit, and the list-all forms of
    /// list agents and watch, whose results must then be filtered by
    /// [`Principal::visible_workspaces`]).
    pub fn may(&self, op: Operation, workspace: Option<&WorkspaceId>) -> Decision {
        // Visibility is decided before the role: if a workspace outside the scope could yield
        // Forbidden for some operations, the difference would reveal that it exists.
        if let Some(ws) = workspace
            && !self.0.scope.contains(ws)
        {
            return Decision::NotFound;
        }
        if !self.0.role.allows(op) {
            return Decision::Forbidden;
        }
        // Unreachable through the tokens file (check_grant refuses scoped admins) but kept so
        // the rule holds however a Principal comes to be.
        if op.spans_all_workspaces() && !self.0.scope.is_all() {
            return Decision::Forbidden;
        }
        Decision::Allow
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {} ({})", self.0.name, self.0.role)
    }
}

/// The token in an `Authorization` header or gRPC `authorization` metadata value:
/// `Bearer <token>`, the scheme matched case-insensitively (RFC 9110 §11.1).
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, rest) = header_value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (!token.is_empty()).then_some(token)
}

// ---------------------------------------------------------------------------------------------
// Generating tokens
// ---------------------------------------------------------------------------------------------

/// A freshly made token and the tokens-file entry that grants it. `Debug` leaves the token out.
pub struct NewToken {
    token: String,
    hash: TokenHash,
    name: TokenName,
    role: Role,
    scope: WorkspaceScope,
}

impl NewToken {
    /// The secret: shown to the user once, never stored by the hub.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn hash(&self) -> &TokenHash {
        &self.hash
    }

    /// The `[[tokens]]` entry to paste into the tokens file, ending in a newline.
    pub fn toml_entry(&self) -> String {
        // Names and workspace ids cannot contain quotes or backslashes, so plain quoting is
        // valid TOML.
        format!(
            "[[tokens]]\nname = \"{}\"\nhash = \"{}\"\nrole = \"{}\"\nworkspaces = {}\n",
            self.name,
            self.hash,
            self.role,
            self.scope.to_toml()
        )
    }

    /// What `mosaic-hub token new` prints: the token once, then the entry to paste.
    pub fn cli_output(&self) -> String {
        format!(
            "Token for \"{name}\" (shown only this once; the hub keeps only its hash, so store it in your secret manager now):\n\
             \n    {token}\n\n\
             Add this entry to the hub's tokens file; the hub picks it up within a second (or on SIGHUP):\n\
             \n{entry}",
            name = self.name,
            token = self.token,
            entry = self.toml_entry(),
        )
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("token", &"<redacted>")
            .field("hash", &self.hash)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NewTokenError {
    // getrandom is built without its `std` feature, so its error is not a `std::error::Error`
    // and can only be shown, not chained as a source.
    #[error(
        "cannot get random bytes from the operating system ({0}); check that getrandom(2) or /dev/urandom is usable by this process"
    )]
    Random(getrandom::Error),
    #[error(transparent)]
    Grant(#[from] GrantError),
}

/// Makes a new token for `name` with `role` over `scope`.
///
/// The token is `mosaic_` followed by 64 lowercase hex digits encoding 32 bytes from the
/// operating system's CSPRNG (71 characters). Hex rather than base64url: it is what the `hex`
/// crate already gives, survives any copy/paste or shell quoting, and is selected whole by a
/// double click. The same role/scope rules as the tokens file apply, so the CLI cannot print an
/// entry that the hub would refuse.
pub fn new_token(
    name: TokenName,
    role: Role,
    scope: WorkspaceScope,
) -> Result<NewToken, NewTokenError> {
    check_grant(role, &scope)?;
    if let WorkspaceScope::Only(set) = &scope
        && set.is_empty()
    {
        return Err(GrantError::Empty.into());
    }
    let mut random = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut random).map_err(NewTokenError::Random)?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(random));
    Ok(NewToken {
        hash: TokenHash::of(&token),
        token,
        name,
        role,
        scope,
    })
}

// ---------------------------------------------------------------------------------------------
// The tokens file
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "cannot read tokens file {path}: {source}; check the tokens path in hub.toml and the file's permissions"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokens file {path}: {message}; fix the file")]
    Parse { path: PathBuf, message: String },
    #[error("tokens file {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

impl AuthConfigError {
    /// The offending key, e.g. `tokens[2].hash`, when one is at fault.
    pub fn field(&self) -> Option<&str> {
        match self {
            AuthConfigError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The file's top level. Entries are taken as plain tables and checked key by key below:
/// serde's derive reports which key failed only inside its message text, and every error here
/// must name `tokens[i].<key>`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tokens: Vec<toml::Table>,
}

/// One `[[tokens]]` entry, shape-checked but not yet validated.
struct RawToken {
    name: String,
    hash: Option<String>,
    identity: Option<String>,
    role: String,
    workspaces: toml::Value,
}

const ENTRY_KEYS: [&str; 5] = ["name", "hash", "identity", "role", "workspaces"];

/// Builds errors that name the file and a key of entry `index`.
struct EntryContext<'a> {
    path: &'a Path,
    index: usize,
}

impl EntryContext<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> AuthConfigError {
        AuthConfigError::Invalid {
            path: self.path.to_owned(),
            field: format!("tokens[{}].{key}", self.index),
            message: message.into(),
        }
    }

    fn raw(&self, mut table: toml::Table) -> Result<RawToken, AuthConfigError> {
        // Unknown keys first: a misspelt `hahs` is better reported as itself than as a
        // missing `hash`.
        if let Some(key) = table.keys().find(|k| !ENTRY_KEYS.contains(&k.as_str())) {
            return Err(self.error(
                key,
                "unknown key; an entry has only name, hash (or identity), role and workspaces",
            ));
        }
        let mut optional = |key: &str, hint: &str| -> Result<Option<String>, AuthConfigError> {
            match table.remove(key) {
                Some(toml::Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(self.error(
                    key,
                    format!("must be a string, not {}; {hint}", a(other.type_str())),
                )),
                None => Ok(None),
            }
        };
        let name = optional("name", "add name = \"<who uses the token>\"")?;
        let hash_hint =
            "add hash = \"sha256:<64 hex digits>\" as printed by `mosaic-hub token new`";
        let identity_hint =
            "identity = \"spiffe://<trust-domain>/admin/<name>\" names a client certificate";
        let hash = optional("hash", hash_hint)?;
        let identity = optional("identity", identity_hint)?;
        let role = optional("role", "add role = \"admin\", \"operator\" or \"viewer\"")?;
        let name =
            name.ok_or_else(|| self.error("name", "missing; add name = \"<who uses the token>\""))?;
        match (&hash, &identity) {
            (None, None) => {
                return Err(self.error(
                    "hash",
                    format!("missing; {hash_hint} (or give a client certificate's identity instead: {identity_hint})"),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(self.error(
                    "identity",
                    "an entry grants either a token (hash) or a client certificate (identity), not both; split it in two entries",
                ));
            }
            _ => {}
        }
        let role = role.ok_or_else(|| {
            self.error(
                "role",
                "missing; add role = \"admin\", \"operator\" or \"viewer\"",
            )
        })?;
        let workspaces = table.remove("workspaces").ok_or_else(|| {
            self.error(
                "workspaces",
                "missing; add workspaces = [\"<workspace id>\", …] or workspaces = \"*\" for all",
            )
        })?;
        Ok(RawToken {
            name,
            hash,
            identity,
            role,
            workspaces,
        })
    }

    fn scope(&self, value: &toml::Value) -> Result<WorkspaceScope, AuthConfigError> {
        let items: Vec<&str> = match value {
            toml::Value::String(s) if s == "*" => vec!["*"],
            toml::Value::String(s) => {
                return Err(self.error(
                    "workspaces",
                    format!(
                        "must be \"*\" or a list; write [{s:?}] for that one workspace, or \"*\" for all"
                    ),
                ));
            }
            toml::Value::Array(values) => {
                let mut items = Vec::with_capacity(values.len());
                for (j, v) in values.iter().enumerate() {
                    match v {
                        toml::Value::String(s) => items.push(s.as_str()),
                        other => {
                            return Err(self.error(
                                &format!("workspaces[{j}]"),
                                format!(
                                    "must be a string workspace id, not {}",
                                    a(other.type_str())
                                ),
                            ));
                        }
                    }
                }
                items
            }
            other => {
                return Err(self.error(
                    "workspaces",
                    format!(
                        "must be \"*\" or a list of workspace ids, not {}",
                        a(other.type_str())
                    ),
                ));
            }
        };
        WorkspaceScope::parse(items).map_err(|e| match e.index() {
            Some(j) => self.error(&format!("workspaces[{j}]"), e.to_string()),
            None => self.error("workspaces", e.to_string()),
        })
    }

    fn grant(&self, raw: RawToken) -> Result<Grant, AuthConfigError> {
        let name: TokenName = raw
            .name
            .parse()
            .map_err(|e: TokenNameError| self.error("name", e.to_string()))?;
        let hash: Option<TokenHash> = raw
            .hash
            .map(|h| h.parse())
            .transpose()
            .map_err(|e: TokenHashError| self.error("hash", e.to_string()))?;
        let identity = match raw.identity {
            None => None,
            Some(i) => match SpiffeId::parse(&i) {
                Ok(id) if id.role == TlsRole::Admin => Some(id.to_string()),
                _ => {
                    return Err(self.error(
                        "identity",
                        format!(
                            "{:?} is not spiffe://<trust-domain>/admin/<name>, the identity of an admin client certificate (`mosaic-hub certs init --admin <name>`)",
                            i.chars().take(120).collect::<String>()
                        ),
                    ));
                }
            },
        };
        let role: Role = raw
            .role
            .parse()
            .map_err(|e: RoleError| self.error("role", e.to_string()))?;
        let scope = self.scope(&raw.workspaces)?;
        check_grant(role, &scope).map_err(|e| self.error("workspaces", e.to_string()))?;
        Ok(Grant {
            name,
            hash,
            identity,
            role,
            scope,
        })
    }
}

/// One validated tokens file: the set of tokens the hub accepts at a moment.
#[derive(Debug, Default)]
pub struct TokenSet {
    grants: Vec<Arc<Grant>>,
}

impl TokenSet {
    /// Reads and validates the tokens file at `path`.
    pub fn load(path: &Path) -> Result<Self, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Validates a tokens file's text; `path` only names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, AuthConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| AuthConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned() + &line_hint(text, e.span()),
        })?;
        let mut grants: Vec<Arc<Grant>> = Vec::with_capacity(raw.tokens.len());
        let mut names: BTreeMap<TokenName, usize> = BTreeMap::new();
        let mut hashes: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        let mut identities: BTreeMap<String, usize> = BTreeMap::new();
        for (index, table) in raw.tokens.into_iter().enumerate() {
            let cx = EntryContext { path, index };
            let grant = cx.grant(cx.raw(table)?)?;
            if let Some(first) = names.insert(grant.name.clone(), index) {
                return Err(cx.error(
                    "name",
                    format!(
                        "{:?} is already the name of tokens[{first}]; give each token its own name",
                        grant.name.as_str()
                    ),
                ));
            }
            if let Some(identity) = &grant.identity
                && let Some(first) = identities.insert(identity.clone(), index)
            {
                return Err(cx.error(
                    "identity",
                    format!("same identity as tokens[{first}]; give each certificate one entry"),
                ));
            }
            if let Some(first) = grant.hash.as_ref().and_then(|h| hashes.insert(h.0, index)) {
                return Err(cx.error(
                    "hash",
                    format!(
                        "same hash as tokens[{first}], so both entries are the same token; give each user its own token (`mosaic-hub token new`)"
                    ),
                ));
            }
            grants.push(Arc::new(grant));
        }
        Ok(TokenSet { grants })
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The token names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &TokenName> {
        self.grants.iter().map(|g| &g.name)
    }

    /// The principal whose token is `presented`, or `None` (refuse the request with
    /// `UNAUTHENTICATED` / HTTP 401, whatever the reason).
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        if presented.is_empty() || presented.len() > MAX_TOKEN_LEN {
            return None;
        }
        let hash = TokenHash::of(presented);
        let mut found = None;
        // Every entry is compared, in constant time, with no early exit: how long this takes
        // does not depend on whether or where the presented token's hash matched.
        for grant in &self.grants {
            if let Some(h) = &grant.hash
                && h.ct_eq(&hash)
            {
                found = Some(Principal(Arc::clone(grant)));
            }
        }
        found
    }

    /// The principal whose entry names `identity`, the SPIFFE id of a client certificate that
    /// the TLS layer verified against the hub's CA; `None` if no entry does.
    pub fn authenticate_identity(&self, identity: &SpiffeId) -> Option<Principal> {
        if identity.role != TlsRole::Admin {
            return None;
        }
        let presented = identity.to_string();
        self.grants
            .iter()
            .find(|g| g.identity.as_deref() == Some(presented.as_str()))
            .map(|g| Principal(Arc::clone(g)))
    }

    /// Whether this set still has `principal`'s entry, unchanged (same name, hash, role and
    /// workspaces).
    fn contains(&self, principal: &Principal) -> bool {
        self.grants.iter().any(|g| **g == *principal.0)
    }

    /// Names added, removed and modified (same name, another hash, role or scope) from `self`
    /// to `new`.
    fn diff(&self, new: &TokenSet) -> TokenDiff {
        let old: BTreeMap<&TokenName, &Grant> =
            self.grants.iter().map(|g| (&g.name, &**g)).collect();
        let new: BTreeMap<&TokenName, &Grant> =
            new.grants.iter().map(|g| (&g.name, &**g)).collect();
        let mut diff = TokenDiff::default();
        for (name, grant) in &new {
            match old.get(name) {
                None => diff.added.push((*name).clone()),
                Some(before) if before != grant => diff.modified.push((*name).clone()),
                Some(_) => {}
            }
        }
        diff.removed = old
            .keys()
            .filter(|name| !new.contains_key(*name))
            .map(|name| (*name).clone())
            .collect();
        diff
    }
}

#[derive(Debug, Default)]
struct TokenDiff {
    added: Vec<TokenName>,
    removed: Vec<TokenName>,
    modified: Vec<TokenName>,
}

impl TokenDiff {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.modified.is_empty()
    }
}

/// A TOML type name with its article, for messages ("an integer", "a table").
fn a(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {type_name}")
}

fn line_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The live store and reloading
// ---------------------------------------------------------------------------------------------

/// What a successful [`TokenStore::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The file holds the same tokens as before (perhaps reordered or reformatted); nothing was
    /// swapped and open streams were not woken.
    Unchanged,
    /// The new set is in force. Token names, in name order, for the log.
    Changed {
        added: Vec<TokenName>,
        removed: Vec<TokenName>,
        modified: Vec<TokenName>,
        /// How many tokens the new set has.
        tokens: usize,
        /// The generation now published by [`TokenStore::subscribe`].
        generation: u64,
    },
}

/// The tokens in force, reloadable while the hub runs.
///
/// The set sits in a `std::sync::RwLock<Arc<TokenSet>>`: every request reads it, possibly from
/// synchronous code (an interceptor), so a read must be a short, non-async critical section —
/// the lock is held only to clone the `Arc`, and the set is then used lock-free while a reload
/// swaps in a new `Arc`. Changes are announced separately on a `tokio::sync::watch` channel
/// carrying a generation counter, which is what async streaming handlers need to wait on; it is
/// bumped after the swap, so a woken waiter always sees the new set. (A `watch` channel holding
/// the set itself would also work; the counter keeps the contract small and lets waiters skip
/// holding a set.)
pub struct TokenStore {
    path: PathBuf,
    current: RwLock<Arc<TokenSet>>,
    generation: watch::Sender<u64>,
    /// Serializes reloads (SIGHUP and the poller may race, and an older read must never be
    /// swapped in after a newer one) and remembers the fingerprint of the last file read.
    last_read: Mutex<Option<Fingerprint>>,
}

impl TokenStore {
    /// Loads the tokens file at `path` (resolved by the caller against `hub.toml`'s directory).
    /// At start a broken file is an error: the hub must not come up with no or stale tokens.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, AuthConfigError> {
        let path = path.into();
        let seen = fingerprint(&path);
        let set = TokenSet::load(&path)?;
        warn_about(&path, &set);
        Ok(TokenStore {
            path,
            current: RwLock::new(Arc::new(set)),
            generation: watch::Sender::new(0),
            last_read: Mutex::new(seen),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<TokenSet> {
        // A panic cannot happen while the write lock is held (it only assigns an Arc), and if
        // it somehow did, the value inside is still a whole set: recovering from poison is safe.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// [`TokenSet::authenticate`] against the set in force now.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        self.current().authenticate(presented)
    }

    /// [`TokenSet::authenticate_identity`] against the set in force now.
    pub fn authenticate_identity(&self, identity: &SpiffeId) -> Option<Principal> {
        self.current().authenticate_identity(identity)
    }

    /// Whether `principal`'s token entry is still in force, unchanged. A removed token, a
    /// rotated hash, or a changed role or workspace list all make it invalid: a stream opened
    /// under the old grant must end, and the client reconnects under the new one.
    pub fn still_valid(&self, principal: &Principal) -> bool {
        self.current().contains(principal)
    }

    /// A receiver of the generation counter, bumped whenever a reload changes the set. A
    /// streaming handler waits on `changed()` and then checks [`TokenStore::still_valid`] (or
    /// simply awaits [`TokenStore::revoked`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The current generation (0 after [`TokenStore::load`]).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Resolves once `principal`'s token is no longer valid. Meant for a streaming handler's
    /// `tokio::select!`, to end the stream when its token is removed or changed.
    pub async fn revoked(&self, principal: &Principal) {
        // Subscribe before checking, so a reload between the check and the wait still wakes us.
        let mut changes = self.subscribe();
        loop {
            if !self.still_valid(principal) {
                return;
            }
            if changes.changed().await.is_err() {
                // The sender lives in `self`, which we borrow, so this cannot happen; ending
                // the stream is the safe answer if it ever did.
                return;
            }
        }
    }

    /// Rereads the tokens file and, if it is valid and differs, swaps it in and bumps the
    /// generation. A file that cannot be read or is invalid leaves the previous set in force
    /// and returns the error, for the caller to log.
    pub fn reload(&self) -> Result<ReloadOutcome, AuthConfigError> {
        let mut last_read = self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Fingerprint before reading: if the file changes while it is read, the next poll sees
        // a newer fingerprint and reloads again, so no change is missed. Recorded even when the
        // file turns out broken, so the poller reports a broken file once, not every second.
        *last_read = fingerprint(&self.path);
        let new = TokenSet::load(&self.path)?;
        let diff = self.current().diff(&new);
        if diff.is_empty() {
            return Ok(ReloadOutcome::Unchanged);
        }
        warn_about(&self.path, &new);
        let tokens = new.len();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
        let mut generation = 0;
        self.generation.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        Ok(ReloadOutcome::Changed {
            added: diff.added,
            removed: diff.removed,
            modified: diff.modified,
            tokens,
            generation,
        })
    }

    /// Whether the file looks different from the one last read.
    fn file_changed(&self) -> bool {
        let last = *self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        fingerprint(&self.path) != last
    }
}

/// Warnings about a set that loads but is probably not what the operator wants.
fn warn_about(path: &Path, set: &TokenSet) {
    if set.is_empty() {
        tracing::warn!(
            path = %path.display(),
            "the tokens file lists no tokens, so every admin API request will be refused; add entries with `mosaic-hub token new`"
        );
    }
    #[cfg(unix)]
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        // Whoever can write the file can grant themselves admin.
        if meta.permissions().mode() & 0o002 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the tokens file is writable by every user, who could grant themselves admin; chmod o-w it"
            );
        }
    }
}

/// Reloads `store` on SIGHUP and whenever its file changes, logging each outcome. Runs until
/// its task is dropped; start it (`tokio::spawn(watch_for_changes(store, POLL_INTERVAL, m))`)
/// before the hub announces readiness, since until the SIGHUP handler is installed a SIGHUP
/// would kill the process.
///
/// Change detection polls the file's mtime, length and inode every `poll_every` rather than
/// using inotify: no extra crate, works on every platform and file system (including network
/// and overlay mounts where inotify is silent), and also sees Kubernetes-style symlink swaps
/// that an inotify watch on the old file misses. One `stat` per second costs nothing.
pub async fn watch_for_changes(
    store: Arc<TokenStore>,
    poll_every: Duration,
    metrics: mosaic_shared::ops::CommonMetrics,
) {
    let mut hangups = Hangups::install("tokens");
    metrics.reloaded("tokens", true);
    let mut ticks = tokio::time::interval(poll_every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cause = tokio::select! {
            _ = ticks.tick() => {
                if !store.file_changed() {
                    continue;
                }
                "file changed"
            }
            () = hangups.next() => "SIGHUP",
        };
        let path = store.path().display();
        let outcome = store.reload();
        metrics.reloaded("tokens", outcome.is_ok());
        match outcome {
            Ok(ReloadOutcome::Unchanged) => {
                tracing::debug!(%path, cause, "tokens file reread; tokens unchanged");
            }
            Ok(ReloadOutcome::Changed {
                added,
                removed,
                modified,
                tokens,
                generation,
            }) => tracing::info!(
                %path,
                cause,
                tokens,
                generation,
                added = %join(&added),
                removed = %join(&removed),
                modified = %join(&modified),
                "admin API tokens reloaded"
            ),
            Err(error) => tracing::error!(
                %path,
                cause,
                %error,
                "tokens file reload failed; the previous tokens stay in force"
            ),
        }
    }
}

fn join(names: &[TokenName]) -> String {
    let names: Vec<&str> = names.iter().map(TokenName::as_str).collect();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const P: &str = "tokens.toml";

    fn ws(s: &str) -> WorkspaceId {
        s.parse().unwrap()
    }

    fn entry(name: &str, token: &str, role: &str, workspaces: &str) -> String {
        format!(
            "[[tokens]]\nname = \"{name}\"\nhash = \"{}\"\nrole = \"{role}\"\nworkspaces = {workspaces}\n",
            TokenHash::of(token)
        )
    }

    fn set(text: &str) -> TokenSet {
        TokenSet::from_toml(text, Path::new(P)).unwrap()
    }

    fn parse_err(text: &str) -> AuthConfigError {
        TokenSet::from_toml(text, Path::new(P)).unwrap_err()
    }

    /// A principal built directly, bypassing the file's rules (for the defensive checks).
    fn principal(role: Role, scope: WorkspaceScope) -> Principal {
        Principal(Arc::new(Grant {
            name: "t".parse().unwrap(),
            hash: Some(TokenHash::of("t")),
            identity: None,
            role,
            scope,
        }))
    }

    fn only(items: &[&str]) -> WorkspaceScope {
        WorkspaceScope::parse(items.iter().copied()).unwrap()
    }

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir = std::env::temp_dir().join(format!(
                "hubauth-{tag}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, text: &str) -> PathBuf {
            let path = self.0.join(P);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    // --- authorization ----------------------------------------------------------------------

    #[test]
    fn role_operation_matrix() {
        use Operation::*;
        // (operation, viewer, operator, admin), spelled out rather than derived from the code.
        let table = [
            (ListSpokes, true, true, true),
            (Spawn, false, true, true),
            (GetStatus, true, true, true),
            (Kill, false, true, true),
            (ListAgents, true, true, true),
            (Watch, true, true, true),
            (QueueStats, true, true, true),
            (PauseQueue, false, false, true),
            (ResumeQueue, false, false, true),
            (Audit, false, false, true),
        ];
        assert_eq!(table.len(), Operation::ALL.len());
        for (op, viewer, operator, admin) in table {
            for (role, expected) in [
                (Role::Viewer, viewer),
                (Role::Operator, operator),
                (Role::Admin, admin),
            ] {
                assert_eq!(role.allows(op), expected, "{role} {op}");
                let p = principal(role, WorkspaceScope::All);
                let want = if expected {
                    Decision::Allow
                } else {
                    Decision::Forbidden
                };
                assert_eq!(p.may(op, None), want, "{role} {op} no workspace");
                assert_eq!(p.may(op, Some(&ws("any"))), want, "{role} {op} in any");
            }
        }
    }

    #[test]
    fn own_other_and_star_workspaces() {
        let own = ws("team-a");
        let other = ws("team-z");
        for role in [Role::Viewer, Role::Operator] {
            let scoped = principal(role, only(&["team-a", "team-b"]));
            let star = principal(role, WorkspaceScope::All);
            for op in Operation::ALL {
                let by_role = if role.allows(op) && !op.spans_all_workspaces() {
                    Decision::Allow
                } else {
                    Decision::Forbidden
                };
                assert_eq!(scoped.may(op, Some(&own)), by_role, "{role} {op} own");
                // Another workspace is NotFound even when the role also lacks the operation.
                assert_eq!(
                    scoped.may(op, Some(&other)),
                    Decision::NotFound,
                    "{role} {op} other"
                );
                assert_eq!(
                    star.may(op, Some(&other)),
                    if role.allows(op) {
                        Decision::Allow
                    } else {
                        Decision::Forbidden
                    },
                    "{role} {op} star"
                );
            }
        }
        let admin = principal(Role::Admin, WorkspaceScope::All);
        for op in Operation::ALL {
            assert_eq!(admin.may(op, Some(&other)), Decision::Allow, "admin {op}");
        }
    }

    #[test]
    fn workspace_wide_operations_need_every_workspace() {
        // Cannot come from the file (see admin_must_cover_every_workspace) but must hold anyway.
        let scoped_admin = principal(Role::Admin, only(&["team-a"]));
        for op in [
            Operation::PauseQueue,
            Operation::ResumeQueue,
            Operation::Audit,
        ] {
            assert_eq!(scoped_admin.may(op, None), Decision::Forbidden, "{op}");
        }
        assert_eq!(
            scoped_admin.may(Operation::Kill, Some(&ws("team-a"))),
            Decision::Allow
        );
        assert_eq!(
            scoped_admin.may(Operation::Audit, Some(&ws("team-b"))),
            Decision::NotFound
        );
    }

    #[test]
    fn visible_workspaces_filters_lists() {
        let scoped = principal(Role::Viewer, only(&["team-a"]));
        let scope = scoped.visible_workspaces();
        assert!(scope.contains(&ws("team-a")));
        assert!(!scope.contains(&ws("team-b")));
        assert_eq!(scope.to_string(), "team-a");
        let all = principal(Role::Viewer, WorkspaceScope::All);
        assert!(all.visible_workspaces().contains(&ws("anything")));
        assert_eq!(all.visible_workspaces(), &WorkspaceScope::All);
    }

    #[test]
    fn scope_parsing() {
        assert_eq!(WorkspaceScope::parse(["*"]), Ok(WorkspaceScope::All));
        assert_eq!(only(&["b", "a"]).to_toml(), "[\"a\", \"b\"]");
        assert_eq!(WorkspaceScope::parse([]), Err(GrantError::Empty));
        assert_eq!(
            WorkspaceScope::parse(["a", "*"]),
            Err(GrantError::StarMixed)
        );
        let e = WorkspaceScope::parse(["a", "a/b"]).unwrap_err();
        assert_eq!(e.index(), Some(1));
        let e = WorkspaceScope::parse(["a", "b", "a"]).unwrap_err();
        assert_eq!(
            e,
            GrantError::Duplicate {
                index: 2,
                workspace: ws("a")
            }
        );
    }

    #[test]
    fn roles_and_operations_have_stable_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            "unknown role \"root\"; use admin, operator or viewer"
        );
        assert!("Admin".parse::<Role>().is_err());
        let names: BTreeSet<&str> = Operation::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Operation::ALL.len());
    }

    // --- hashes and names -------------------------------------------------------------------

    #[test]
    fn hash_format() {
        let h = TokenHash::of("abc");
        // The published SHA-256 test vector for "abc".
        assert_eq!(
            h.to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_string().parse::<TokenHash>(), Ok(h.clone()));
        let upper = format!("sha256:{}", hex::encode_upper(h.0));
        assert_eq!(upper.parse::<TokenHash>(), Ok(h));
        assert_eq!(
            "ba7816bf".parse::<TokenHash>(),
            Err(TokenHashError::MissingPrefix)
        );
        assert_eq!(
            "sha256:ba7816bf".parse::<TokenHash>(),
            Err(TokenHashError::WrongLength { len: 8 })
        );
        assert_eq!(
            format!("sha256:{}", "g".repeat(64)).parse::<TokenHash>(),
            Err(TokenHashError::NotHex)
        );
        assert_eq!(
            format!("{TOKEN_PREFIX}{}", "0".repeat(64)).parse::<TokenHash>(),
            Err(TokenHashError::TokenNotHash)
        );
    }

    #[test]
    fn constant_time_equality_is_equality() {
        let a = TokenHash::of("a");
        assert!(a.ct_eq(&a.clone()));
        for i in 0..32 {
            let mut b = a.clone();
            b.0[i] ^= 0x80;
            assert!(!a.ct_eq(&b), "byte {i}");
        }
    }

    #[test]
    fn token_names() {
        assert!("ci".parse::<TokenName>().is_ok());
        assert!("ci.deploy_bot-2".parse::<TokenName>().is_ok());
        assert_eq!("".parse::<TokenName>(), Err(TokenNameError::Empty));
        assert!(matches!(
            "x".repeat(65).parse::<TokenName>(),
            Err(TokenNameError::TooLong { len: 65, max: 64 })
        ));
        assert!("-ci".parse::<TokenName>().is_err());
        assert!("c i".parse::<TokenName>().is_err());
        assert!("c\"i".parse::<TokenName>().is_err());
    }

    // --- the tokens file --------------------------------------------------------------------

    #[test]
    fn parses_a_tokens_file() {
        let s = set(&format!(
            "{}{}{}",
            entry("ci", "tok-ci", "operator", r#"["team-a", "team-b"]"#),
            entry("dash", "tok-dash", "viewer", r#""*""#),
            entry("root", "tok-root", "admin", r#""*""#),
        ));
        assert_eq!(s.len(), 3);
        let names: Vec<&str> = s.names().map(TokenName::as_str).collect();
        assert_eq!(names, ["ci", "dash", "root"]);
        let ci = s.authenticate("tok-ci").unwrap();
        assert_eq!(ci.name().as_str(), "ci");
        assert_eq!(ci.role(), Role::Operator);
        assert_eq!(ci.visible_workspaces(), &only(&["team-a", "team-b"]));
        assert_eq!(ci.to_string(), "token ci (operator)");
        assert!(
            s.authenticate("tok-dash")
                .unwrap()
                .visible_workspaces()
                .is_all()
        );
    }

    #[test]
    fn empty_file_denies_everything() {
        for text in ["", "tokens = []\n"] {
            let s = set(text);
            assert!(s.is_empty());
            assert!(s.authenticate("anything").is_none());
        }
    }

    #[test]
    fn hash_errors_name_the_entry_and_field() {
        let text = format!(
            "{}{}[[tokens]]\nname = \"c\"\nhash = \"sha256:abc\"\nrole = \"viewer\"\nworkspaces = \"*\"\n",
            entry("a", "ta", "viewer", "\"*\""),
            entry("b", "tb", "viewer", "\"*\""),
        );
        let err = parse_err(&text);
        assert_eq!(err.field(), Some("tokens[2].hash"));
        assert_eq!(
            err.to_string(),
            "tokens file tokens.toml: tokens[2].hash: has 3 characters after \"sha256:\" but a SHA-256 hash has 64 hex digits; copy the whole hash from `mosaic-hub token new`"
        );
        // A token pasted as its own hash is called out and not echoed.
        let text = "[[tokens]]\nname = \"a\"\nhash = \"mosaic_secret\"\nrole = \"viewer\"\nworkspaces = \"*\"\n";
        let err = parse_err(text);
        assert_eq!(err.field(), Some("tokens[0].hash"));
        assert!(!err.to_string().contains("mosaic_secret"), "{err}");
        assert!(err.to_string().contains("leaked"), "{err}");
    }

    #[test]
    fn a_certificate_identity_grants_like_a_token_and_is_checked() {
        let cert = "[[tokens]]\nname = \"ops\"\nidentity = \"spiffe://td/admin/ops\"\nrole = \"operator\"\nworkspaces = [\"w\"]\n";
        let set = TokenSet::from_toml(
            &format!("{}{cert}", entry("a", "ta", "viewer", "\"*\"")),
            Path::new(P),
        )
        .unwrap();
        let ops = set
            .authenticate_identity(&SpiffeId::new("td", TlsRole::Admin, "ops"))
            .unwrap();
        assert_eq!((ops.name().as_str(), ops.role()), ("ops", Role::Operator));
        // Another trust domain, another name, or another role is nobody.
        for id in [
            SpiffeId::new("other", TlsRole::Admin, "ops"),
            SpiffeId::new("td", TlsRole::Admin, "opz"),
            SpiffeId::new("td", TlsRole::Spoke, "ops"),
        ] {
            assert!(set.authenticate_identity(&id).is_none(), "{id}");
        }
        // A certificate entry is no token.
        assert!(set.authenticate("").is_none());

        let both = "[[tokens]]\nname = \"x\"\nidentity = \"spiffe://td/admin/x\"\nhash = \"sha256:00\"\nrole = \"viewer\"\nworkspaces = \"*\"\n";
        let err = parse_err(both);
        assert_eq!(err.field(), Some("tokens[0].identity"));
        assert!(err.to_string().contains("not both"), "{err}");
        let spoke = "[[tokens]]\nname = \"x\"\nidentity = \"spiffe://td/spoke/x\"\nrole = \"viewer\"\nworkspaces = \"*\"\n";
        let err = parse_err(spoke);
        assert_eq!(err.field(), Some("tokens[0].identity"));
        assert!(err.to_string().contains("/admin/<name>"), "{err}");
        let twice = format!(
            "{cert}{}",
            cert.replace("name = \"ops\"", "name = \"ops2\"")
        );
        let err = parse_err(&twice);
        assert_eq!(err.field(), Some("tokens[1].identity"));
    }

    #[test]
    fn entry_errors_name_the_entry_and_field() {
        let ok = entry("a", "ta", "viewer", "\"*\"");
        let cases = [
            (
                "[[tokens]]\nname = \"b\"\nhahs = \"x\"\n",
                "tokens[1].hahs",
                "unknown key",
            ),
            (
                "[[tokens]]\nname = \"b\"\nrole = \"viewer\"\nworkspaces = \"*\"\n",
                "tokens[1].hash",
                "missing",
            ),
            (
                "[[tokens]]\nname = 5\n",
                "tokens[1].name",
                "must be a string, not an integer",
            ),
            (
                "[[tokens]]\nname = \"b c\"\nhash = \"sha256:\"\nrole = \"viewer\"\nworkspaces = \"*\"\n",
                "tokens[1].name",
                "not allowed",
            ),
            (
                &entry("b", "tb", "root", "\"*\""),
                "tokens[1].role",
                "use admin, operator or viewer",
            ),
            (
                &entry("b", "tb", "viewer", "[\"x\", \"a/b\"]"),
                "tokens[1].workspaces[1]",
                "not allowed",
            ),
            (
                &entry("b", "tb", "viewer", "[\"x\", 3]"),
                "tokens[1].workspaces[1]",
                "must be a string",
            ),
            (
                &entry("b", "tb", "viewer", "[\"x\", \"y\", \"x\"]"),
                "tokens[1].workspaces[2]",
                "listed twice",
            ),
            (
                &entry("b", "tb", "viewer", "[\"x\", \"*\"]"),
                "tokens[1].workspaces",
                "\"*\" alone",
            ),
            (
                &entry("b", "tb", "viewer", "[]"),
                "tokens[1].workspaces",
                "no workspace listed",
            ),
            (
                &entry("b", "tb", "viewer", "\"team-a\""),
                "tokens[1].workspaces",
                "write [\"team-a\"]",
            ),
            (
                &entry("b", "tb", "viewer", "true"),
                "tokens[1].workspaces",
                "not a boolean",
            ),
            (
                &entry("b", "tb", "viewer", "[\"x\"]").replace("workspaces", "workspace"),
                "tokens[1].workspace",
                "unknown key",
            ),
        ];
        for (bad, field, words) in cases {
            let err = parse_err(&format!("{ok}{bad}"));
            assert_eq!(err.field(), Some(field), "{bad}: {err}");
            assert!(err.to_string().contains(words), "{bad}: {err}");
        }
    }

    #[test]
    fn admin_must_cover_every_workspace() {
        let err = parse_err(&entry("root", "t", "admin", "[\"team-a\"]"));
        assert_eq!(err.field(), Some("tokens[0].workspaces"));
        assert!(err.to_string().contains("use role operator"), "{err}");
    }

    #[test]
    fn file_level_errors() {
        let err = parse_err("tokenz = []\n");
        assert!(matches!(err, AuthConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("unknown field `tokenz`"), "{err}");
        let err = parse_err("[[tokens]\nname = 1\n");
        assert!(err.to_string().contains("(line 1)"), "{err}");
        let err = parse_err("tokens = 3\n");
        assert!(
            err.to_string().starts_with("tokens file tokens.toml: "),
            "{err}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let err = parse_err(&format!(
            "{}{}{}",
            entry("ci", "t1", "viewer", "\"*\""),
            entry("dash", "t2", "viewer", "\"*\""),
            entry("ci", "t3", "viewer", "\"*\""),
        ));
        assert_eq!(err.field(), Some("tokens[2].name"));
        assert!(err.to_string().contains("tokens[0]"), "{err}");

        // The same hash, even spelled in capitals, is the same token.
        let upper = entry("b", "t1", "viewer", "\"*\"");
        let hex = TokenHash::of("t1").to_string()[7..].to_owned();
        let upper = upper.replace(&hex, &hex.to_uppercase());
        let err = parse_err(&format!("{}{upper}", entry("a", "t1", "viewer", "\"*\"")));
        assert_eq!(err.field(), Some("tokens[1].hash"));
        assert!(err.to_string().contains("same hash as tokens[0]"), "{err}");
    }

    // --- authentication ---------------------------------------------------------------------

    #[test]
    fn authenticate_right_wrong_and_overlong() {
        let long = "x".repeat(MAX_TOKEN_LEN + 1);
        let max = "y".repeat(MAX_TOKEN_LEN);
        let s = set(&format!(
            "{}{}{}",
            entry("a", "tok-a", "viewer", "\"*\""),
            entry("long", &long, "viewer", "\"*\""),
            entry("max", &max, "viewer", "\"*\""),
        ));
        assert_eq!(s.authenticate("tok-a").unwrap().name().as_str(), "a");
        assert!(s.authenticate("tok-b").is_none());
        assert!(s.authenticate("tok-a ").is_none());
        assert!(s.authenticate("TOK-A").is_none());
        assert!(s.authenticate("").is_none());
        // Refused before hashing even though its hash is listed.
        assert!(s.authenticate(&long).is_none());
        assert_eq!(s.authenticate(&max).unwrap().name().as_str(), "max");
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("abc"), None);
    }

    // --- generating tokens ------------------------------------------------------------------

    #[test]
    fn generated_tokens_round_trip() {
        let new = new_token(
            "ci".parse().unwrap(),
            Role::Operator,
            only(&["team-a", "team-b"]),
        )
        .unwrap();
        let token = new.token();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(token.starts_with(TOKEN_PREFIX));
        assert!(
            token[TOKEN_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
        assert_eq!(new.hash(), &TokenHash::of(token));

        let s = set(&new.toml_entry());
        let p = s.authenticate(token).unwrap();
        assert_eq!(p.name().as_str(), "ci");
        assert_eq!(p.role(), Role::Operator);
        assert_eq!(
            p.may(Operation::Spawn, Some(&ws("team-b"))),
            Decision::Allow
        );
        assert_eq!(
            p.may(Operation::Spawn, Some(&ws("team-c"))),
            Decision::NotFound
        );

        let other = new_token("ci".parse().unwrap(), Role::Admin, WorkspaceScope::All).unwrap();
        assert_ne!(other.token(), token);
        assert!(s.authenticate(other.token()).is_none());
        assert!(other.toml_entry().contains("workspaces = \"*\"\n"));
    }

    #[test]
    fn new_token_output_and_secrecy() {
        let new = new_token("ci".parse().unwrap(), Role::Viewer, only(&["team-a"])).unwrap();
        let expected_entry = format!(
            "[[tokens]]\nname = \"ci\"\nhash = \"{}\"\nrole = \"viewer\"\nworkspaces = [\"team-a\"]\n",
            new.hash()
        );
        assert_eq!(new.toml_entry(), expected_entry);
        let out = new.cli_output();
        assert_eq!(out.matches(new.token()).count(), 1, "{out}");
        assert!(out.contains(&format!("\n    {}\n", new.token())), "{out}");
        assert!(out.ends_with(&expected_entry), "{out}");
        let debug = format!("{new:?}");
        assert!(!debug.contains(new.token()), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn new_token_follows_the_file_rules() {
        let err = new_token("root".parse().unwrap(), Role::Admin, only(&["team-a"])).unwrap_err();
        assert!(matches!(
            err,
            NewTokenError::Grant(GrantError::AdminNeedsAllWorkspaces)
        ));
        let err = new_token(
            "x".parse().unwrap(),
            Role::Viewer,
            WorkspaceScope::Only(BTreeSet::new()),
        )
        .unwrap_err();
        assert!(matches!(err, NewTokenError::Grant(GrantError::Empty)));
    }

    // --- the store and reloading ------------------------------------------------------------

    fn two_tokens() -> String {
        format!(
            "{}{}",
            entry("ci", "tok-ci", "operator", "[\"team-a\"]"),
            entry("dash", "tok-dash", "viewer", "\"*\"")
        )
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = TempDir::new("missing");
        let err = TokenStore::load(dir.0.join("nope.toml")).err().unwrap();
        assert!(matches!(err, AuthConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("nope.toml"), "{err}");
        assert!(err.to_string().contains("hub.toml"), "{err}");
    }

    #[test]
    fn reload_swaps_the_set() {
        let dir = TempDir::new("swap");
        let path = dir.write(&two_tokens());
        let store = TokenStore::load(&path).unwrap();
        assert_eq!(store.path(), path);
        assert!(store.authenticate("tok-ci").is_some());
        assert_eq!(store.generation(), 0);

        // Same tokens, reordered and reformatted: nothing to do, nobody woken.
        std::fs::write(
            &path,
            format!(
                "# comment\n{}{}",
                entry("dash", "tok-dash", "viewer", "\"*\""),
                entry("ci", "tok-ci", "operator", "[ \"team-a\" ]")
            ),
        )
        .unwrap();
        assert_eq!(store.reload().unwrap(), ReloadOutcome::Unchanged);
        assert_eq!(store.generation(), 0);

        std::fs::write(
            &path,
            format!(
                "{}{}",
                entry("dash", "tok-dash", "viewer", "[\"team-a\"]"),
                entry("new", "tok-new", "operator", "\"*\"")
            ),
        )
        .unwrap();
        let outcome = store.reload().unwrap();
        assert_eq!(
            outcome,
            ReloadOutcome::Changed {
                added: vec!["new".parse().unwrap()],
                removed: vec!["ci".parse().unwrap()],
                modified: vec!["dash".parse().unwrap()],
                tokens: 2,
                generation: 1,
            }
        );
        assert_eq!(store.generation(), 1);
        assert!(store.authenticate("tok-ci").is_none());
        assert!(store.authenticate("tok-new").is_some());
        assert!(
            !store
                .authenticate("tok-dash")
                .unwrap()
                .visible_workspaces()
                .is_all()
        );
    }

    #[test]
    fn a_broken_file_keeps_the_previous_set() {
        let dir = TempDir::new("broken");
        let path = dir.write(&two_tokens());
        let store = TokenStore::load(&path).unwrap();
        let before = store.current();

        std::fs::write(&path, entry("ci", "tok-ci", "root", "\"*\"")).unwrap();
        let err = store.reload().unwrap_err();
        assert_eq!(err.field(), Some("tokens[0].role"));
        std::fs::write(&path, "[[tokens]\n").unwrap();
        assert!(matches!(store.reload(), Err(AuthConfigError::Parse { .. })));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.reload(), Err(AuthConfigError::Read { .. })));

        assert!(Arc::ptr_eq(&before, &store.current()));
        assert_eq!(store.generation(), 0);
        assert!(store.authenticate("tok-ci").is_some());
        assert!(store.authenticate("tok-dash").is_some());
    }

    #[test]
    fn removal_invalidates_principals_and_bumps_the_generation() {
        let dir = TempDir::new("remove");
        let path = dir.write(&two_tokens());
        let store = TokenStore::load(&path).unwrap();
        let ci = store.authenticate("tok-ci").unwrap();
        let dash = store.authenticate("tok-dash").unwrap();
        let mut changes = store.subscribe();
        assert!(store.still_valid(&ci) && store.still_valid(&dash));

        // Adding someone else changes nothing for open streams.
        std::fs::write(
            &path,
            format!("{}{}", two_tokens(), entry("x", "tok-x", "viewer", "\"*\"")),
        )
        .unwrap();
        store.reload().unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(store.still_valid(&ci) && store.still_valid(&dash));

        std::fs::write(&path, entry("dash", "tok-dash", "viewer", "\"*\"")).unwrap();
        store.reload().unwrap();
        assert!(changes.has_changed().unwrap());
        assert_eq!(*changes.borrow_and_update(), 2);
        assert!(!store.still_valid(&ci));
        assert!(store.still_valid(&dash));

        // A rotated hash under the same name is a different token.
        std::fs::write(&path, entry("dash", "tok-dash-2", "viewer", "\"*\"")).unwrap();
        store.reload().unwrap();
        assert!(!store.still_valid(&dash));
    }

    #[tokio::test]
    async fn revoked_resolves_when_the_token_goes() {
        let dir = TempDir::new("revoked");
        let path = dir.write(&two_tokens());
        let store = Arc::new(TokenStore::load(&path).unwrap());
        let ci = store.authenticate("tok-ci").unwrap();
        let waiter = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.revoked(&ci).await })
        };
        tokio::task::yield_now().await;
        // A change that leaves ci alone does not end its stream.
        std::fs::write(
            &path,
            format!("{}{}", two_tokens(), entry("x", "tx", "viewer", "\"*\"")),
        )
        .unwrap();
        store.reload().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());

        std::fs::write(&path, entry("dash", "tok-dash", "viewer", "\"*\"")).unwrap();
        store.reload().unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("revoked() resolves after the token is removed")
            .unwrap();
    }

    #[tokio::test]
    async fn the_poller_picks_up_changes() {
        let dir = TempDir::new("poll");
        let path = dir.write(&two_tokens());
        let store = Arc::new(TokenStore::load(&path).unwrap());
        let dash = store.authenticate("tok-dash").unwrap();
        let mut changes = store.subscribe();
        let watcher = tokio::spawn(watch_for_changes(
            Arc::clone(&store),
            Duration::from_millis(20),
            Default::default(),
        ));

        // An in-place edit of the same length: only the mtime tells. Sleep first so the new
        // mtime differs even on a file system with coarse timestamps.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rotated = two_tokens().replace(
            &TokenHash::of("tok-dash").to_string(),
            &TokenHash::of("tok-dash2").to_string(),
        );
        assert_eq!(rotated.len(), two_tokens().len());
        std::fs::write(&path, &rotated).unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the poller notices an in-place edit")
            .unwrap();
        assert!(!store.still_valid(&dash));
        assert!(store.authenticate("tok-dash2").is_some());

        // A broken file is reported and ignored; the fix after it is picked up.
        std::fs::write(&path, "[[tokens]\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(store.authenticate("tok-dash2").is_some());

        // Replacing the file by rename, as editors and config managers do.
        let tmp = dir.0.join("tokens.toml.new");
        std::fs::write(&tmp, entry("only", "tok-only", "viewer", "\"*\"")).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the poller notices a replaced file")
            .unwrap();
        assert!(store.authenticate("tok-only").is_some());
        assert!(store.authenticate("tok-ci").is_none());
        watcher.abort();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sighup_reloads() {
        let dir = TempDir::new("hup");
        let path = dir.write(&two_tokens());
        let store = Arc::new(TokenStore::load(&path).unwrap());
        let mut changes = store.subscribe();
        // Polling effectively off, so only the signal can cause the reload.
        let watcher = tokio::spawn(watch_for_changes(
            Arc::clone(&store),
            Duration::from_secs(3600),
            Default::default(),
        ));
        // Let the watcher run up to its first wait, which installs the SIGHUP handler (without
        // it, SIGHUP would end the test process).
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!watcher.is_finished());
        std::fs::write(&path, entry("hup", "tok-hup", "viewer", "\"*\"")).unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("SIGHUP triggers a reload")
            .unwrap();
        assert!(store.authenticate("tok-hup").is_some());
        watcher.abort();
    }
}
