//! Archives a source downloads (an OCI DevOps repository archive, an Object Storage
//! object): tar, gzipped tar or zip, told apart by their first bytes, and read under a path
//! with the rules the Git tree reader applies: entry paths stay inside the archive, symlinks
//! only to files inside the synced path, no hard links or devices, each path once, and the
//! size, count and depth caps. The archive is held as downloaded (compressed) and expanded
//! per read, so a revision costs its download size in memory, not its expanded size.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::sync::Arc;

use super::git::tree::{display_root, normalize, resolve_link, within};
use super::{Error, File, Limits, Result};

/// Symlinks are followed at most this deep, as in Git trees.
const MAX_SYMLINK_HOPS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Tar,
    TarGz,
    Zip,
}

impl Format {
    /// What the first bytes say the archive is.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(&[0x1f, 0x8b]) {
            Some(Format::TarGz)
        } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            Some(Format::Zip)
        } else if bytes.get(257..262) == Some(b"ustar") {
            Some(Format::Tar)
        } else {
            None
        }
    }
}

/// One entry as the archive declares it.
#[derive(Debug)]
enum Entry {
    Dir,
    /// A regular file: its size, and its content when it was under the path being read and
    /// within the size limit.
    File {
        size: u64,
        content: Option<Vec<u8>>,
    },
    Link(String),
}

/// Loads the content of the entry being visited.
type Load<'l> = &'l mut dyn FnMut() -> Result<Vec<u8>>;
/// Sees each entry, with what loads its content when wanted.
type Visit<'v> = &'v mut dyn FnMut(String, Entry, Load<'_>) -> Result<()>;

/// A downloaded archive, checked to be one, with the top-level directory to strip (a
/// hosting service's `<repo>-<commit>/`) found once.
pub struct Archive {
    /// What it came from, for messages (`source repo: archive of <commit>`).
    what: String,
    format: Format,
    bytes: Vec<u8>,
    strip: Option<String>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("what", &self.what)
            .field("format", &self.format)
            .field("bytes", &self.bytes.len())
            .field("strip", &self.strip)
            .finish()
    }
}

impl Archive {
    /// `bytes` as an archive. When every entry lies under one top-level directory whose
    /// name holds `commit`'s first 7 digits, that directory is the archive's root (as the
    /// archives of Git hosting services are laid out); otherwise the archive's own root is.
    pub fn new(what: &str, bytes: Vec<u8>, commit: Option<&str>, limits: &Limits) -> Result<Self> {
        let format = Format::sniff(&bytes).ok_or_else(|| Error::Archive {
            what: what.to_owned(),
            reason: "not a tar, tar.gz or zip archive".into(),
        })?;
        let mut archive = Archive {
            what: what.to_owned(),
            format,
            bytes,
            strip: None,
        };
        if let Some(commit) = commit.filter(|c| c.len() >= 7) {
            let short = commit[..7].to_ascii_lowercase();
            let mut tops = std::collections::BTreeSet::new();
            archive.walk(limits, &mut |path, _, _| {
                tops.insert(path.split('/').next().unwrap_or(&path).to_owned());
                Ok(())
            })?;
            if let [top] = tops.into_iter().collect::<Vec<_>>().as_slice()
                && top.to_ascii_lowercase().contains(&short)
            {
                archive.strip = Some(top.clone());
            }
        }
        Ok(archive)
    }

    /// [`Archive::new`] off the async threads (it expands the archive once); `source` names
    /// the source for a task that failed.
    pub async fn open(
        source: &str,
        what: String,
        bytes: Vec<u8>,
        commit: Option<String>,
        limits: &Limits,
    ) -> Result<Arc<Self>> {
        let limits = limits.clone();
        tokio::task::spawn_blocking(move || {
            Archive::new(&what, bytes, commit.as_deref(), &limits).map(Arc::new)
        })
        .await
        .map_err(|e| Error::Task {
            name: source.to_owned(),
            source: e,
        })?
    }

    /// [`Archive::read`] off the async threads.
    pub async fn read_in_task(
        self: &Arc<Self>,
        source: &str,
        path: &str,
        limits: &Limits,
    ) -> Result<Vec<File>> {
        let (archive, path, limits) = (self.clone(), path.to_owned(), limits.clone());
        tokio::task::spawn_blocking(move || archive.read(&path, &limits))
            .await
            .map_err(|e| Error::Task {
                name: source.to_owned(),
                source: e,
            })?
    }

    /// Bytes as downloaded.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Every file under `path` (`""` for all), sorted, under the same rules as a Git tree.
    pub fn read(&self, path: &str, limits: &Limits) -> Result<Vec<File>> {
        let root = normalize(path)?;
        let mut entries = BTreeMap::new();
        self.walk(limits, &mut |full, mut entry, load| {
            let Some(p) = self.strip_root(&full) else {
                return Ok(());
            };
            if !within(&root, &p) {
                return Ok(());
            }
            if let Entry::File { size, content } = &mut entry
                && *size <= limits.max_file_size
            {
                *content = Some(load()?);
            }
            if entries.insert(p.clone(), entry).is_some() {
                return Err(bad_path(p, "appears more than once in the archive"));
            }
            Ok(())
        })?;
        if !root.is_empty()
            && !entries.contains_key(&root)
            && !entries.keys().any(|k| within(&root, k) && k != &root)
        {
            return Err(Error::Archive {
                what: self.what.clone(),
                reason: format!("{root}: not found"),
            });
        }
        Resolver {
            root: &root,
            entries: &entries,
            limits,
        }
        .files()
    }

    fn strip_root(&self, path: &str) -> Option<String> {
        match &self.strip {
            None => Some(path.to_owned()),
            Some(top) => path
                .strip_prefix(top.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .filter(|r| !r.is_empty())
                .map(str::to_owned),
        }
    }

    /// Calls `visit` with each entry, in archive order.
    fn walk(&self, limits: &Limits, visit: Visit<'_>) -> Result<()> {
        let budget = Budget::new(limits);
        match self.format {
            Format::Tar => self.walk_tar(Cursor::new(&self.bytes), &budget, visit),
            Format::TarGz => {
                let gz = flate2::read::GzDecoder::new(Cursor::new(&self.bytes));
                self.walk_tar(gz, &budget, visit)
            }
            Format::Zip => self.walk_zip(&budget, visit),
        }
    }

    fn bad(&self, reason: String) -> Error {
        Error::Archive {
            what: self.what.clone(),
            reason,
        }
    }

    fn walk_tar(&self, reader: impl Read, budget: &Budget, visit: Visit<'_>) -> Result<()> {
        use tar::EntryType as T;
        let mut tar = tar::Archive::new(budget.guard(reader));
        let entries = tar.entries().map_err(|e| self.bad(budget.why(e)))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.bad(budget.why(e)))?;
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
            ) {
                continue;
            }
            let path = entry_path(&entry.path_bytes())?;
            let declared = match kind {
                T::Directory => Entry::Dir,
                T::Regular | T::Continuous => Entry::File {
                    size: entry.size(),
                    content: None,
                },
                T::Symlink => {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    Entry::Link(String::from_utf8_lossy(&target).into_owned())
                }
                T::Link => return Err(bad_path(path, "hard links are not supported")),
                _ => return Err(bad_path(path, "not a file, directory or symlink")),
            };
            let mut load = || {
                let mut content = Vec::new();
                entry
                    .read_to_end(&mut content)
                    .map_err(|e| self.bad(budget.why(e)))?;
                Ok(content)
            };
            visit(path, declared, &mut load)?;
        }
        Ok(())
    }

    fn walk_zip(&self, budget: &Budget, visit: Visit<'_>) -> Result<()> {
        let mut zip =
            zip::ZipArchive::new(Cursor::new(&self.bytes)).map_err(|e| self.bad(e.to_string()))?;
        for i in 0..zip.len() {
            let mut file = zip.by_index(i).map_err(|e| self.bad(e.to_string()))?;
            let path = entry_path(file.name_raw())?;
            let mode = file.unix_mode().unwrap_or(0) & 0o170000;
            let size = file.size();
            let declared = if file.is_dir() {
                Entry::Dir
            } else if mode == 0o120000 {
                let mut target = Vec::new();
                budget
                    .guard(file.by_ref().take(4096))
                    .read_to_end(&mut target)
                    .map_err(|e| self.bad(budget.why(e)))?;
                Entry::Link(String::from_utf8_lossy(&target).into_owned())
            } else if mode == 0 || mode == 0o100000 {
                Entry::File {
                    size,
                    content: None,
                }
            } else {
                return Err(bad_path(path, "not a file, directory or symlink"));
            };
            let shown = path.clone();
            let mut load = || {
                let mut content = Vec::new();
                // The declared size is the zip's word only: read no more than it says.
                budget
                    .guard(file.by_ref().take(size + 1))
                    .read_to_end(&mut content)
                    .map_err(|e| self.bad(budget.why(e)))?;
                if content.len() as u64 != size {
                    return Err(bad_path(
                        shown.clone(),
                        "content does not match its declared size",
                    ));
                }
                Ok(content)
            };
            visit(path, declared, &mut load)?;
        }
        Ok(())
    }
}

fn bad_path(path: String, reason: &'static str) -> Error {
    Error::BadPath { path, reason }
}

/// An entry's name as a path from the archive's root: UTF-8, relative, no `..`.
fn entry_path(raw: &[u8]) -> Result<String> {
    let name = std::str::from_utf8(raw).map_err(|_| Error::BadPath {
        path: String::from_utf8_lossy(raw).into_owned(),
        reason: "file name is not UTF-8",
    })?;
    if name.starts_with('/') {
        return Err(bad_path(name.to_owned(), "absolute path in the archive"));
    }
    let path = normalize(name)?;
    if path.is_empty() {
        return Err(bad_path(name.to_owned(), "empty path in the archive"));
    }
    Ok(path)
}

/// The cap on what one walk expands, against decompression bombs: four times a revision's
/// byte limit (what is not read still has to be expanded to be skipped).
struct Budget {
    max: u64,
    used: std::cell::Cell<u64>,
}

impl Budget {
    fn new(limits: &Limits) -> Self {
        Budget {
            max: limits.max_total_bytes.saturating_mul(4),
            used: std::cell::Cell::new(0),
        }
    }

    fn guard<R: Read>(&self, inner: R) -> Guarded<'_, R> {
        Guarded {
            inner,
            budget: self,
        }
    }

    fn why(&self, e: std::io::Error) -> String {
        if self.used.get() > self.max {
            format!("expands to more than {} bytes", self.max)
        } else {
            e.to_string()
        }
    }
}

struct Guarded<'a, R> {
    inner: R,
    budget: &'a Budget,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.budget.used.get() + n as u64;
        self.budget.used.set(used);
        if used > self.budget.max {
            return Err(std::io::Error::other("archive expands past its cap"));
        }
        Ok(n)
    }
}

/// The rules, over the entries under the root.
struct Resolver<'a> {
    root: &'a str,
    entries: &'a BTreeMap<String, Entry>,
    limits: &'a Limits,
}

impl Resolver<'_> {
    fn files(&self) -> Result<Vec<File>> {
        let mut files = Vec::new();
        let mut bytes = 0u64;
        let base = self.root.split('/').filter(|p| !p.is_empty()).count();
        for (path, entry) in self.entries {
            let depth = path.split('/').count() - base;
            let dir_depth = if matches!(entry, Entry::Dir) {
                depth
            } else {
                depth.saturating_sub(1)
            };
            if dir_depth > self.limits.max_depth {
                return Err(Error::TooDeep {
                    path: path.clone(),
                    max: self.limits.max_depth,
                });
            }
            if matches!(entry, Entry::Dir) || !self.limits.reads(path) {
                continue;
            }
            let target = match entry {
                Entry::Link(_) => self.follow(path)?,
                _ => path.as_str(),
            };
            let Some(Entry::File { size, content }) = self.entries.get(target) else {
                unreachable!("follow ends at a file");
            };
            if files.len() >= self.limits.max_files {
                return Err(Error::TooManyFiles {
                    path: display_root(self.root),
                    max: self.limits.max_files,
                });
            }
            if *size > self.limits.max_file_size {
                return Err(Error::FileTooLarge {
                    path: path.clone(),
                    size: *size,
                    max: self.limits.max_file_size,
                });
            }
            bytes += size;
            if bytes > self.limits.max_total_bytes {
                return Err(Error::TooManyBytes {
                    path: display_root(self.root),
                    max: self.limits.max_total_bytes,
                });
            }
            files.push(File {
                path: path.clone(),
                content: content.clone().unwrap_or_default(),
            });
        }
        Ok(files)
    }

    /// The file a symlink finally names, within the root.
    fn follow<'p>(&'p self, path: &'p str) -> Result<&'p str> {
        let mut at = path;
        for _ in 0..MAX_SYMLINK_HOPS {
            let Some((key, Entry::Link(target))) = self.entries.get_key_value(at) else {
                unreachable!("only links are followed");
            };
            let escape = || Error::SymlinkEscape {
                path: path.to_owned(),
                target: target.clone(),
                root: display_root(self.root),
            };
            let resolved = resolve_link(key, target).ok_or_else(escape)?;
            if !within(self.root, &resolved) {
                return Err(escape());
            }
            let broken = |reason| Error::Symlink {
                path: path.to_owned(),
                target: target.clone(),
                reason,
            };
            let (key, entry) = self
                .entries
                .get_key_value(resolved.as_str())
                .ok_or_else(|| broken("the target does not exist"))?;
            match entry {
                Entry::Link(_) => at = key,
                Entry::Dir => return Err(broken("links to directories are not followed")),
                Entry::File { .. } => return Ok(key),
            }
        }
        Err(Error::Symlink {
            path: path.to_owned(),
            target: at.to_owned(),
            reason: "too many levels of symbolic links",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Dir(&'a str),
    }

    fn tar(entries: &[E<'_>], gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match e {
                E::File(p, c) => {
                    h.set_size(c.len() as u64);
                    h.set_entry_type(tar::EntryType::Regular);
                    // set_path refuses `..`; hostile archives are written raw.
                    h.as_gnu_mut().unwrap().name[..p.len()].copy_from_slice(p.as_bytes());
                    h.set_cksum();
                    b.append(&h, *c).unwrap();
                }
                E::Link(p, t) | E::Hard(p, t) => {
                    h.set_size(0);
                    let kind = if matches!(e, E::Link(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    h.set_entry_type(kind);
                    h.set_link_name(t).unwrap();
                    h.set_path(p).unwrap();
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }
                E::Dir(p) => {
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_path(p).unwrap();
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }
            }
        }
        let bytes = b.into_inner().unwrap();
        if !gzip {
            return bytes;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&bytes).unwrap();
        gz.finish().unwrap()
    }

    fn open(bytes: Vec<u8>, commit: Option<&str>) -> Result<Archive> {
        Archive::new("test archive", bytes, commit, &Limits::default())
    }

    fn paths(files: &[File]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_hosting_services_top_directory_is_stripped_only_when_it_names_the_commit() {
        let bytes = tar(
            &[
                E::Dir("shop-0123456789ab/"),
                E::File("shop-0123456789ab/apps/a.yaml", b"a: 1\n"),
                E::File("shop-0123456789ab/apps/b.yml", b"b: 1\n"),
                E::File("shop-0123456789ab/README.md", b"# docs"),
            ],
            true,
        );
        let a = open(bytes.clone(), Some(COMMIT)).unwrap();
        let files = a.read("apps", &Limits::default()).unwrap();
        assert_eq!(paths(&files), ["apps/a.yaml", "apps/b.yml"]);
        assert_eq!(files[0].content, b"a: 1\n");
        // Another commit: the directory is the user's own, kept.
        let a = open(bytes, Some("fedcba9876543210fedcba9876543210fedcba98")).unwrap();
        let files = a.read("", &Limits::default()).unwrap();
        assert_eq!(
            paths(&files),
            [
                "shop-0123456789ab/apps/a.yaml",
                "shop-0123456789ab/apps/b.yml"
            ]
        );
        let err = a.read("apps", &Limits::default()).unwrap_err().to_string();
        assert_eq!(err, "test archive: apps: not found");
    }

    #[test]
    fn plain_tar_and_zip_read_alike() {
        let plain = tar(&[E::File("x/a.yaml", b"a: 1\n")], false);
        assert_eq!(Format::sniff(&plain), Some(Format::Tar));
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file("x/a.yaml", opts).unwrap();
        zip.write_all(b"a: 1\n").unwrap();
        zip.add_symlink("x/link.yaml", "a.yaml", opts).unwrap();
        let zipped = zip.finish().unwrap().into_inner();
        assert_eq!(Format::sniff(&zipped), Some(Format::Zip));
        let t = open(plain, None)
            .unwrap()
            .read("x", &Limits::default())
            .unwrap();
        let z = open(zipped, None)
            .unwrap()
            .read("x", &Limits::default())
            .unwrap();
        assert_eq!(t[0], z[0]);
        assert_eq!(z[1].path, "x/link.yaml");
        assert_eq!(z[1].content, b"a: 1\n");
        let err = open(b"<html>nope</html>".to_vec(), None)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "test archive: not a tar, tar.gz or zip archive");
    }

    #[test]
    fn links_follow_the_rules_of_git_trees() {
        let read = |entries: &[E<'_>]| {
            open(tar(entries, true), None)
                .unwrap()
                .read("app", &Limits::default())
                .map_err(|e| e.to_string())
        };
        let ok = read(&[E::File("app/a.yaml", b"a"), E::Link("app/b.yaml", "a.yaml")]).unwrap();
        assert_eq!(ok[1].content, b"a");
        let escape = read(&[
            E::File("other/s.yaml", b"s"),
            E::Link("app/b.yaml", "../other/s.yaml"),
        ]);
        assert_eq!(
            escape.unwrap_err(),
            "app/b.yaml: symlink to ../other/s.yaml leaves app"
        );
        let abs = read(&[E::Link("app/b.yaml", "/etc/passwd")]);
        assert_eq!(
            abs.unwrap_err(),
            "app/b.yaml: symlink to /etc/passwd leaves app"
        );
        let dir = read(&[E::Dir("app/d/"), E::Link("app/b.yaml", "d")]);
        assert!(
            dir.unwrap_err()
                .contains("links to directories are not followed")
        );
        let looped = read(&[
            E::Link("app/a.yaml", "b.yaml"),
            E::Link("app/b.yaml", "a.yaml"),
        ]);
        assert!(looped.unwrap_err().contains("too many levels"));
        let hard = read(&[
            E::File("app/a.yaml", b"a"),
            E::Hard("app/b.yaml", "app/a.yaml"),
        ]);
        assert_eq!(
            hard.unwrap_err(),
            "app/b.yaml: hard links are not supported"
        );
    }

    #[test]
    fn hostile_paths_and_sizes_are_refused_with_the_path() {
        let read = |entries: &[E<'_>], limits: &Limits| {
            open(tar(entries, true), None)
                .and_then(|a| a.read("", limits))
                .map_err(|e| e.to_string())
        };
        let d = Limits::default();
        assert_eq!(
            read(&[E::File("../up.yaml", b"x")], &d).unwrap_err(),
            "../up.yaml: must not contain '..'"
        );
        assert_eq!(
            read(&[E::File("/abs.yaml", b"x")], &d).unwrap_err(),
            "/abs.yaml: absolute path in the archive"
        );
        assert_eq!(
            read(&[E::File("a.yaml", b"1"), E::File("./a.yaml", b"2")], &d).unwrap_err(),
            "a.yaml: appears more than once in the archive"
        );
        let small = Limits {
            max_file_size: 4,
            ..Default::default()
        };
        assert_eq!(
            read(&[E::File("big.yaml", b"12345")], &small).unwrap_err(),
            "big.yaml: 5 bytes is over the 4-byte file size limit"
        );
        // Files not read cost nothing, whatever their size.
        assert!(
            read(&[E::File("big.png", b"12345")], &small)
                .unwrap()
                .is_empty()
        );
        let few = Limits {
            max_files: 1,
            ..Default::default()
        };
        let two = [E::File("a.yaml", b"1"), E::File("b.yaml", b"2")];
        assert_eq!(read(&two, &few).unwrap_err(), ".: more than 1 files");
        let shallow = Limits {
            max_depth: 1,
            ..Default::default()
        };
        assert_eq!(
            read(&[E::File("a/b/c.yaml", b"1")], &shallow).unwrap_err(),
            "a/b/c.yaml: directories nested deeper than 1"
        );
    }

    #[test]
    fn a_decompression_bomb_stops_at_its_cap() {
        let zeros = vec![0u8; 4 * 1024 * 1024];
        let bytes = tar(&[E::File("zeros.bin", &zeros)], true);
        assert!(bytes.len() < 64 * 1024, "{} bytes compressed", bytes.len());
        let tiny = Limits {
            max_total_bytes: 256 * 1024,
            ..Default::default()
        };
        let err = Archive::new("test archive", bytes, None, &tiny)
            .and_then(|a| a.read("", &tiny))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "test archive: expands to more than 1048576 bytes");
    }
}
