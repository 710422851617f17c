//! The kernel's workspace as the file API sees it: listing, reading, writing, renaming and
//! deleting beneath its root, and nothing else.
//!
//! The kernel runs hostile code concurrently and may turn any directory into a symbolic link
//! at any moment, so no path is ever resolved by name from `/`: every operation opens the root,
//! then resolves beneath it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` (a symlink anywhere on the way fails the call, it is never followed),
//! and acts on the last component relative to its parent's descriptor (`*at` calls, which do
//! not follow a final symlink either). Files are opened `O_NOFOLLOW | O_NONBLOCK` (a fifo never
//! blocks the server) and served only when `fstat` of the descriptor says "regular file".
//! Every call here blocks: callers run them on the blocking pool.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, RenameFlags, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::kernel::AgentPid;

/// Longest path accepted, in bytes (Linux's `PATH_MAX` less room for the root).
const MAX_PATH_BYTES: usize = 1024;
/// Longest name of one component, in bytes (`NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;
/// Deepest path accepted, in components.
const MAX_DEPTH: usize = 32;
/// Entries listed from one directory; the rest are counted, not listed.
pub const MAX_ENTRIES: usize = 5000;
/// Prefix of upload temporaries (renamed over their target when complete).
pub const UPLOAD_PREFIX: &str = ".upload-";

/// Why a workspace operation failed. Each variant names the client's path, never the host's.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The path is not a plain relative path beneath the workspace.
    #[error("invalid path: {0}")]
    BadPath(&'static str),
    /// Nothing by that name.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// A symbolic link on the way or at the end (never followed), or the path leaves the root.
    #[error("{0}: is or passes through a symbolic link, which is never followed")]
    Symlink(String),
    /// Not a regular file (a fifo, socket or device is never opened).
    #[error("{path}: is a {kind}; only regular files can be opened")]
    NotRegular { path: String, kind: Kind },
    /// A component on the way is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(String),
    /// A directory where a file was expected.
    #[error("{0}: is a directory")]
    IsADirectory(String),
    /// The target of a rename exists.
    #[error("{0}: already exists")]
    Exists(String),
    /// A directory to delete is not empty.
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    /// The filesystem refused (the kernel made the directory unwritable, for instance).
    #[error("{0}: permission denied")]
    Permission(String),
    /// The workspace's quota (or disk) is full; nothing was left behind.
    #[error("the workspace is full (its quota is reached); nothing was written")]
    Full,
    /// More files than a walk may list.
    #[error("the workspace holds more than {0} files")]
    TooMany(usize),
    /// The workspace cannot be reached (no kernel agent yet, or no workspace configured).
    #[error("the workspace is not available: {0}")]
    Unavailable(String),
    /// Any other failure of the filesystem.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl WorkspaceError {
    /// A short machine-readable code (the HTTP body's `error` and the refusals metric's label).
    pub fn code(&self) -> &'static str {
        match self {
            WorkspaceError::BadPath(_) => "bad_path",
            WorkspaceError::NotFound(_) => "not_found",
            WorkspaceError::Symlink(_) => "symlink",
            WorkspaceError::NotRegular { .. } => "not_regular",
            WorkspaceError::NotADirectory(_) => "not_a_directory",
            WorkspaceError::IsADirectory(_) => "is_a_directory",
            WorkspaceError::Exists(_) => "exists",
            WorkspaceError::NotEmpty(_) => "not_empty",
            WorkspaceError::Permission(_) => "permission_denied",
            WorkspaceError::Full => "workspace_full",
            WorkspaceError::TooMany(_) => "too_many_files",
            WorkspaceError::Unavailable(_) => "unavailable",
            WorkspaceError::Io { .. } => "io_error",
        }
    }

    /// Maps an errno of an operation on `path`.
    fn from_errno(path: &RelPath, errno: Errno) -> Self {
        let p = path.to_string();
        match errno {
            Errno::ENOENT => WorkspaceError::NotFound(p),
            // ELOOP: a symlink under RESOLVE_NO_SYMLINKS or O_NOFOLLOW; EXDEV: leaving the root.
            Errno::ELOOP | Errno::EXDEV => WorkspaceError::Symlink(p),
            Errno::ENOTDIR => WorkspaceError::NotADirectory(p),
            Errno::EISDIR => WorkspaceError::IsADirectory(p),
            Errno::EEXIST => WorkspaceError::Exists(p),
            Errno::ENOTEMPTY => WorkspaceError::NotEmpty(p),
            Errno::EACCES | Errno::EPERM | Errno::EROFS => WorkspaceError::Permission(p),
            Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG => WorkspaceError::Full,
            Errno::ENAMETOOLONG => WorkspaceError::BadPath("a name is too long"),
            other => WorkspaceError::Io {
                path: p,
                source: std::io::Error::from(other),
            },
        }
    }
}

/// What a directory entry is. Only files and directories are ever opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    Device,
    Other,
}

impl Kind {
    fn of(stat: &FileStat) -> Self {
        match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFIFO => Kind::Fifo,
            SFlag::S_IFSOCK => Kind::Socket,
            SFlag::S_IFCHR | SFlag::S_IFBLK => Kind::Device,
            _ => Kind::Other,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symbolic link",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::Device => "device",
            Kind::Other => "special file",
        })
    }
}

/// A path relative to the workspace root: no `..`, no `.`, not absolute, no NUL, bounded in
/// length and depth. The empty path is the root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    parts: Vec<String>,
}

impl RelPath {
    /// Checks a client's path. A trailing `/` is tolerated; an empty path is the root.
    pub fn parse(text: &str) -> Result<Self, WorkspaceError> {
        if text.len() > MAX_PATH_BYTES {
            return Err(WorkspaceError::BadPath("too long"));
        }
        if text.contains('\0') {
            return Err(WorkspaceError::BadPath("contains NUL"));
        }
        if text.starts_with('/') {
            return Err(WorkspaceError::BadPath(
                "absolute paths are refused; paths are relative to the workspace",
            ));
        }
        let trimmed = text.strip_suffix('/').unwrap_or(text);
        if trimmed.is_empty() {
            return Ok(Self { parts: Vec::new() });
        }
        let mut parts = Vec::new();
        for part in trimmed.split('/') {
            match part {
                "" => return Err(WorkspaceError::BadPath("empty component")),
                "." | ".." => return Err(WorkspaceError::BadPath("`.` and `..` are refused")),
                _ if part.len() > MAX_NAME_BYTES => {
                    return Err(WorkspaceError::BadPath("a name is too long"));
                }
                _ if part.chars().any(char::is_control) => {
                    return Err(WorkspaceError::BadPath("control characters are refused"));
                }
                _ => parts.push(part.to_owned()),
            }
        }
        if parts.len() > MAX_DEPTH {
            return Err(WorkspaceError::BadPath("too deep"));
        }
        Ok(Self { parts })
    }

    /// Whether this is the workspace root.
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The last component (`None` for the root).
    pub fn name(&self) -> Option<&str> {
        self.parts.last().map(String::as_str)
    }

    /// The parent directory and the last component; the root has none.
    fn split(&self) -> Result<(RelPath, &str), WorkspaceError> {
        let (name, parent) = self
            .parts
            .split_last()
            .ok_or(WorkspaceError::BadPath("the workspace root itself"))?;
        Ok((
            RelPath {
                parts: parent.to_vec(),
            },
            name,
        ))
    }

    /// The path for `openat2` (`.` for the root).
    fn c_path(&self) -> Result<CString, WorkspaceError> {
        let joined = if self.parts.is_empty() {
            ".".to_owned()
        } else {
            self.parts.join("/")
        };
        CString::new(joined).map_err(|_| WorkspaceError::BadPath("contains NUL"))
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.parts.join("/"))
    }
}

/// One listed entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    /// Bytes (files only; 0 otherwise).
    pub size: u64,
    /// Last modification, Unix seconds.
    pub modified: i64,
}

/// A directory's listing.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// Entries beyond [`MAX_ENTRIES`], not listed.
    pub omitted: usize,
}

/// A regular file found by [`Workspace::walk_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub path: RelPath,
    pub size: u64,
    /// Last modification, ns since the epoch.
    pub modified_ns: i128,
}

/// A regular file opened for reading.
#[derive(Debug)]
pub struct OpenFile {
    pub file: std::fs::File,
    pub size: u64,
}

/// An upload in progress: a temporary beside its target, renamed over it by [`Upload::commit`]
/// and removed if dropped uncommitted (an error, a size cap, a full quota, a client gone).
#[derive(Debug)]
pub struct Upload {
    parent: OwnedFd,
    temporary: CString,
    target: RelPath,
    name: CString,
    done: bool,
}

impl Upload {
    /// Renames the temporary over the target (replacing a file, never a directory).
    pub fn commit(mut self) -> Result<(), WorkspaceError> {
        nix::fcntl::renameat(
            self.parent.as_fd(),
            self.temporary.as_c_str(),
            self.parent.as_fd(),
            self.name.as_c_str(),
        )
        .map_err(|e| WorkspaceError::from_errno(&self.target, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            let _ = nix::unistd::unlinkat(
                self.parent.as_fd(),
                self.temporary.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// How the file API reaches the workspace: its path as Middleman sees it, through the mount
/// namespace of the agent this Middleman started when there is one (the agent mounts the
/// workspace's size-limited filesystem there, unseen from outside).
#[derive(Debug, Clone)]
pub struct Workspace {
    path: Option<PathBuf>,
    agent: Option<AgentPid>,
}

impl Workspace {
    /// `path` as configured (`None`: no workspace reachable from this container); `agent`: the
    /// agent this Middleman starts, in whose mount namespace the path is to be seen.
    pub fn new(path: Option<PathBuf>, agent: Option<AgentPid>) -> Self {
        Self { path, agent }
    }

    /// Opens the root directory for this operation (the agent may have been replaced since the
    /// last one, with a new mount namespace).
    fn root(&self) -> Result<OwnedFd, WorkspaceError> {
        let path = self
            .path
            .as_deref()
            .ok_or_else(|| WorkspaceError::Unavailable("no workspace is configured".into()))?;
        // The path down to the workspace is Middleman's own, out of the kernel's reach, so it is
        // opened by name; only what lies beneath is the kernel's.
        let target = match &self.agent {
            None => path.to_owned(),
            Some(agent) => {
                // Never the host's path instead: with a quota, files written there would be
                // hidden under the agent's mount.
                let pid = agent.get().ok_or_else(|| {
                    WorkspaceError::Unavailable("the kernel's sandbox is starting".into())
                })?;
                let inside: &Path = path.strip_prefix("/").unwrap_or(path);
                PathBuf::from(format!("/proc/{pid}/root")).join(inside)
            }
        };
        nix::fcntl::open(
            &target,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| WorkspaceError::Unavailable(std::io::Error::from(e).to_string()))
    }

    /// Opens `path` beneath the root, refusing any symlink on the way or at the end.
    fn open_beneath(
        root: &OwnedFd,
        path: &RelPath,
        flags: OFlag,
        mode: Mode,
    ) -> Result<OwnedFd, WorkspaceError> {
        let c_path = path.c_path()?;
        // RESOLVE_NO_SYMLINKS refuses a final symlink too (ELOOP). O_NOFOLLOW says the same for
        // files; with O_DIRECTORY it would turn a final symlink into ENOTDIR, a worse message.
        let nofollow = if flags.contains(OFlag::O_DIRECTORY) {
            OFlag::empty()
        } else {
            OFlag::O_NOFOLLOW
        };
        let how = OpenHow::new()
            .flags(flags | nofollow | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
            .mode(mode)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        // EAGAIN: a rename raced the resolution (the kernel may loop renames); try again.
        let mut attempts = 0;
        loop {
            match nix::fcntl::openat2(root.as_fd(), c_path.as_c_str(), how) {
                Err(Errno::EAGAIN) if attempts < 16 => attempts += 1,
                Err(Errno::ENOSYS) => {
                    return Err(WorkspaceError::Unavailable(
                        "this kernel lacks openat2 (Linux 5.6+)".into(),
                    ));
                }
                other => return other.map_err(|e| WorkspaceError::from_errno(path, e)),
            }
        }
    }

    /// The directory at `path`, opened for `*at` calls.
    fn open_dir(root: &OwnedFd, path: &RelPath) -> Result<OwnedFd, WorkspaceError> {
        Self::open_beneath(
            root,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
    }

    /// The entries of the open directory `dir` (at `path`), to iterate.
    fn entries(dir: &OwnedFd, path: &RelPath) -> Result<nix::dir::Dir, WorkspaceError> {
        let fd = dir.try_clone().map_err(|source| WorkspaceError::Io {
            path: path.to_string(),
            source,
        })?;
        nix::dir::Dir::from_fd(fd).map_err(|e| WorkspaceError::from_errno(path, e))
    }

    /// Lists the directory at `path`: every entry, of every kind, never followed.
    pub fn list(&self, path: &RelPath) -> Result<Listing, WorkspaceError> {
        let root = self.root()?;
        let dir = Self::open_dir(&root, path)?;
        let iterate = Self::entries(&dir, path)?;
        let mut entries = Vec::new();
        let mut omitted = 0;
        for entry in iterate {
            let entry = entry.map_err(|e| WorkspaceError::from_errno(path, e))?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            if entries.len() >= MAX_ENTRIES {
                omitted += 1;
                continue;
            }
            // Gone since it was read (the kernel deleted it): not listed.
            let Ok(stat) = nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let kind = Kind::of(&stat);
            entries.push(Entry {
                name: OsStr::from_bytes(name.to_bytes())
                    .to_string_lossy()
                    .into_owned(),
                kind,
                size: if kind == Kind::File {
                    u64::try_from(stat.st_size).unwrap_or(0)
                } else {
                    0
                },
                modified: stat.st_mtime,
            });
        }
        entries.sort_by(|a, b| (a.kind != Kind::Dir, &a.name).cmp(&(b.kind != Kind::Dir, &b.name)));
        Ok(Listing { entries, omitted })
    }

    /// Every regular file beneath the root, with its size and modification time (ns),
    /// depth first, at most `max_files`. Links, fifos, sockets and devices are never followed
    /// nor listed; directories for which `skip` says so are not entered.
    pub fn walk_files(
        &self,
        skip: impl Fn(&RelPath) -> bool,
        max_files: usize,
    ) -> Result<Vec<FileStamp>, WorkspaceError> {
        let root = self.root()?;
        let mut found = Vec::new();
        let mut pending = vec![RelPath { parts: Vec::new() }];
        while let Some(path) = pending.pop() {
            // A directory the kernel removed or swapped for a link meanwhile: not walked.
            let Ok(dir) = Self::open_dir(&root, &path) else {
                continue;
            };
            let iterate = Self::entries(&dir, &path)?;
            for entry in iterate {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name();
                if matches!(name.to_bytes(), b"." | b"..") {
                    continue;
                }
                let Ok(stat) =
                    nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                else {
                    continue;
                };
                let Ok(name) = std::str::from_utf8(name.to_bytes()) else {
                    continue;
                };
                let mut parts = path.parts.clone();
                parts.push(name.to_owned());
                let child = RelPath { parts };
                match Kind::of(&stat) {
                    Kind::Dir if child.parts.len() < MAX_DEPTH && !skip(&child) => {
                        pending.push(child);
                    }
                    Kind::File => {
                        if found.len() >= max_files {
                            return Err(WorkspaceError::TooMany(max_files));
                        }
                        found.push(FileStamp {
                            path: child,
                            size: u64::try_from(stat.st_size).unwrap_or(0),
                            modified_ns: i128::from(stat.st_mtime) * 1_000_000_000
                                + i128::from(stat.st_mtime_nsec),
                        });
                    }
                    _ => {}
                }
            }
        }
        found.sort_by(|a, b| a.path.parts.cmp(&b.path.parts));
        Ok(found)
    }

    /// Creates the directories of `path` that do not exist yet (owned like the root, as
    /// uploads are), refusing any link on the way.
    pub fn create_dirs(&self, path: &RelPath) -> Result<(), WorkspaceError> {
        let root = self.root()?;
        let mode = Mode::from_bits_truncate(0o770);
        for depth in 1..=path.parts.len() {
            let (parent, name) = RelPath {
                parts: path.parts[..depth].to_vec(),
            }
            .split()
            .map(|(p, n)| (p, n.to_owned()))?;
            let dir = Self::open_dir(&root, &parent)?;
            match nix::sys::stat::mkdirat(dir.as_fd(), name.as_str(), mode) {
                Ok(()) => {
                    if nix::unistd::geteuid().is_root() {
                        let owner = nix::sys::stat::fstat(dir.as_fd())
                            .map_err(|e| WorkspaceError::from_errno(path, e))?;
                        nix::unistd::fchownat(
                            dir.as_fd(),
                            name.as_str(),
                            Some(nix::unistd::Uid::from_raw(owner.st_uid)),
                            Some(nix::unistd::Gid::from_raw(owner.st_gid)),
                            AtFlags::AT_SYMLINK_NOFOLLOW,
                        )
                        .map_err(|e| WorkspaceError::from_errno(path, e))?;
                    }
                }
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(WorkspaceError::from_errno(path, e)),
            }
        }
        // What exists there must be a directory reached without links.
        Self::open_dir(&root, path).map(drop)
    }

    /// Opens the regular file at `path` for reading.
    pub fn open_read(&self, path: &RelPath) -> Result<OpenFile, WorkspaceError> {
        let root = self.root()?;
        let (parent, name) = path.split()?;
        let dir = Self::open_dir(&root, &parent)?;
        // Looked at before opening, so a fifo or device is never opened at all; then checked
        // again on the descriptor, in case the kernel swapped it in between (O_NONBLOCK: a fifo
        // swapped in does not block; the workspace's filesystem is mounted nodev).
        let stat = nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| WorkspaceError::from_errno(path, e))?;
        Self::regular(path, &stat)?;
        let leaf = RelPath {
            parts: vec![name.to_owned()],
        };
        let fd = Self::open_beneath(
            &dir,
            &leaf,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(|e| Self::whole_path(e, path))?;
        let stat =
            nix::sys::stat::fstat(fd.as_fd()).map_err(|e| WorkspaceError::from_errno(path, e))?;
        Self::regular(path, &stat)?;
        Ok(OpenFile {
            file: std::fs::File::from(fd),
            size: u64::try_from(stat.st_size).unwrap_or(0),
        })
    }

    fn regular(path: &RelPath, stat: &FileStat) -> Result<(), WorkspaceError> {
        match Kind::of(stat) {
            Kind::File => Ok(()),
            Kind::Dir => Err(WorkspaceError::IsADirectory(path.to_string())),
            Kind::Symlink => Err(WorkspaceError::Symlink(path.to_string())),
            kind => Err(WorkspaceError::NotRegular {
                path: path.to_string(),
                kind,
            }),
        }
    }

    /// An error about a single leaf, reported with the client's whole path.
    fn whole_path(error: WorkspaceError, path: &RelPath) -> WorkspaceError {
        let p = path.to_string();
        match error {
            WorkspaceError::NotFound(_) => WorkspaceError::NotFound(p),
            WorkspaceError::Symlink(_) => WorkspaceError::Symlink(p),
            WorkspaceError::NotADirectory(_) => WorkspaceError::NotADirectory(p),
            WorkspaceError::IsADirectory(_) => WorkspaceError::IsADirectory(p),
            WorkspaceError::Permission(_) => WorkspaceError::Permission(p),
            WorkspaceError::Io { source, .. } => WorkspaceError::Io { path: p, source },
            other => other,
        }
    }

    /// Starts an upload to `path`: a new temporary beside it, owned like its directory (the
    /// kernel may run as another uid) and readable and writable by that owner and group.
    pub fn create_upload(&self, path: &RelPath) -> Result<(Upload, std::fs::File), WorkspaceError> {
        let root = self.root()?;
        let (parent, name) = path.split()?;
        if name.starts_with(UPLOAD_PREFIX) {
            return Err(WorkspaceError::BadPath(
                "names starting .upload- are reserved",
            ));
        }
        let dir = Self::open_dir(&root, &parent)?;
        let temporary = format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let leaf = RelPath {
            parts: vec![temporary.clone()],
        };
        let mode = Mode::from_bits_truncate(0o660);
        let fd = Self::open_beneath(
            &dir,
            &leaf,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            mode,
        )
        .map_err(|e| Self::whole_path(e, path))?;
        let upload = Upload {
            parent: dir,
            temporary: CString::new(temporary).map_err(|_| WorkspaceError::BadPath("NUL"))?,
            target: path.clone(),
            name: CString::new(name).map_err(|_| WorkspaceError::BadPath("contains NUL"))?,
            done: false,
        };
        // A root Middleman's files would be root's: hand them to the directory's owner (the
        // kernel's uid). Elsewhere (Kubernetes) the shared group and its setgid directory do it.
        if nix::unistd::geteuid().is_root() {
            let owner = nix::sys::stat::fstat(upload.parent.as_fd())
                .map_err(|e| WorkspaceError::from_errno(path, e))?;
            nix::unistd::fchown(
                fd.as_fd(),
                Some(nix::unistd::Uid::from_raw(owner.st_uid)),
                Some(nix::unistd::Gid::from_raw(owner.st_gid)),
            )
            .map_err(|e| WorkspaceError::from_errno(path, e))?;
        }
        // The umask is not ours to trust: the mode is set explicitly.
        nix::sys::stat::fchmod(fd.as_fd(), mode)
            .map_err(|e| WorkspaceError::from_errno(path, e))?;
        Ok((upload, std::fs::File::from(fd)))
    }

    /// Deletes the file, link or empty directory at `path` (a link itself, never its target).
    pub fn delete(&self, path: &RelPath) -> Result<Kind, WorkspaceError> {
        let root = self.root()?;
        let (parent, name) = path.split()?;
        let dir = Self::open_dir(&root, &parent)?;
        let stat = nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| WorkspaceError::from_errno(path, e))?;
        let kind = Kind::of(&stat);
        let flag = if kind == Kind::Dir {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(dir.as_fd(), name, flag)
            .map_err(|e| WorkspaceError::from_errno(path, e))?;
        Ok(kind)
    }

    /// Renames `from` to `to`, refusing to replace anything.
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), WorkspaceError> {
        let root = self.root()?;
        let (from_parent, from_name) = from.split()?;
        let (to_parent, to_name) = to.split()?;
        if to_name.starts_with(UPLOAD_PREFIX) {
            return Err(WorkspaceError::BadPath(
                "names starting .upload- are reserved",
            ));
        }
        let from_dir = Self::open_dir(&root, &from_parent)?;
        let to_dir = Self::open_dir(&root, &to_parent)?;
        nix::fcntl::renameat2(
            from_dir.as_fd(),
            from_name,
            to_dir.as_fd(),
            to_name,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| match e {
            Errno::EEXIST => WorkspaceError::Exists(to.to_string()),
            // Moving a directory into itself.
            Errno::EINVAL => WorkspaceError::BadPath("a directory cannot move into itself"),
            other => WorkspaceError::from_errno(from, other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_beneath_the_root() {
        assert!(RelPath::parse("").unwrap().is_root());
        assert!(RelPath::parse("/").is_err());
        assert_eq!(RelPath::parse("a/b.csv").unwrap().to_string(), "a/b.csv");
        assert_eq!(RelPath::parse("a/").unwrap().to_string(), "a");
        for bad in [
            "..",
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\0b",
            "a\nb",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(RelPath::parse(&"n".repeat(256)).is_err());
        assert!(RelPath::parse(&"a/".repeat(40)).is_err());
        assert_eq!(RelPath::parse("..").unwrap_err().code(), "bad_path");
    }

    /// Another process (the kernel) swaps a directory on the way for a symlink out of the root,
    /// again and again, while files are read through it: the outside file is never served.
    #[test]
    fn a_directory_swapped_for_a_symlink_mid_flight_is_never_followed() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = testkit::TempDir::new("workspace-swap");
        let root = dir.0.join("root");
        let outside = dir.0.join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("d/f"), "inside").unwrap();
        std::fs::write(outside.join("f"), "SECRET").unwrap();
        let workspace = Workspace::new(Some(root.clone()), None);
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::fs::rename(root.join("d"), root.join("d.real")).unwrap();
                    std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
                    std::fs::remove_file(root.join("d")).unwrap();
                    std::fs::rename(root.join("d.real"), root.join("d")).unwrap();
                }
            })
        };
        let path = RelPath::parse("d/f").unwrap();
        let (mut served, mut refused) = (0, 0);
        for _ in 0..3000 {
            match workspace.open_read(&path) {
                Ok(opened) => {
                    let text = std::io::read_to_string(opened.file).unwrap();
                    assert_eq!(text, "inside");
                    served += 1;
                }
                Err(e) => {
                    assert!(
                        matches!(e.code(), "symlink" | "not_found" | "not_a_directory"),
                        "{e}"
                    );
                    refused += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(served + refused, 3000);
        // How many reads landed while the real directory was in place depends on scheduling
        // (none, on a loaded machine): what matters is that none was the outside file. That
        // the reads work at all is checked once the swapping stops.
        let opened = workspace.open_read(&path).unwrap();
        assert_eq!(std::io::read_to_string(opened.file).unwrap(), "inside");
    }
}
