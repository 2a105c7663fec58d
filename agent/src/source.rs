//! Git sources: a bare mirror per source in the state directory, fetched incrementally
//! with git2, and the files of one commit's tree read straight from the object database.

/// One file of a revision, as read from Git (or a local directory): its path relative to
/// the repository root, with `/` separators, and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub content: Vec<u8>,
}
