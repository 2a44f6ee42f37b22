package proto

import "time"

// File and system methods (protocol version 2).
const (
	MethodFileStat     = "file.stat"
	MethodFilePush     = "file.push"
	MethodFilePull     = "file.pull"
	MethodFileWait     = "file.wait"
	MethodFileDownload = "file.download"
	MethodSystemReboot = "system.reboot"
	// NoteProgress is the notification an agent sends while a request
	// that carried a progress token runs.
	NoteProgress = "progress"
)

// Capabilities of the file and system families.
const (
	CapFile     = "file"
	CapDownload = "file.download"
	CapReboot   = "system.reboot"
	// CapFrames: file.pull takes Frame, the largest DATA payload its
	// caller reads in one frame (up to MaxBulkFrame), and file.push
	// answers with the agent's.
	CapFrames = "file.frames"
)

// MaxBulkFrame is the largest DATA payload a transfer's receiver may ask
// for (file.pull's Frame, file.push's answer): four times the default
// frame, so a transfer costs a quarter of the messages, writes and
// wake-ups on both ends. Other streams keep their default.
const MaxBulkFrame = 256 << 10

// Paths in file requests are absolute paths on the board, in clean form (no
// "." or ".." elements, no trailing slash), under one of the agent's file
// roots. A path outside every root, or one that leaves its root through a
// symlink, is refused as invalid params on "path".

// FileStatParams asks about one path. With Hash, a regular file's sha256 is
// computed (that reads the whole file).
type FileStatParams struct {
	Path string `json:"path" validate:"required,max=4096,boardpath"`
	Hash bool   `json:"hash,omitempty"`
}

// FileInfo describes a path on the board. Mode holds the permission bits
// (as chmod takes them); a missing path has Exists false and nothing else.
type FileInfo struct {
	Path    string    `json:"path"`
	Exists  bool      `json:"exists"`
	Dir     bool      `json:"dir,omitempty"`
	Size    int64     `json:"size"`
	Mode    uint32    `json:"mode,omitempty"`
	ModTime time.Time `json:"mtime,omitzero"`
	SHA256  string    `json:"sha256,omitempty"`
}

// FilePushParams starts a push into Path. The caller opened Stream and, once
// the answer arrives, writes the file's bytes from the answer's Offset on,
// then closes its side (FIN); file.wait then reports the result.
//
// The agent writes into a partial file beside Path, keyed by SHA256, and
// renames it over Path only once every byte is there, fsynced and its hash
// is SHA256: a cut link never leaves a half file under the real name. A
// later push of the same content resumes from what the partial file holds.
type FilePushParams struct {
	Path    string    `json:"path" validate:"required,max=4096,boardpath"`
	Size    int64     `json:"size" validate:"min=0"`
	SHA256  string    `json:"sha256" validate:"required,len=64,hexadecimal,lowercase"`
	Mode    uint32    `json:"mode,omitempty" validate:"max=4095"` // permission bits; 0: 0644
	ModTime time.Time `json:"mtime,omitzero"`                     // zero: the time of the write
	Stream  uint32    `json:"stream" validate:"required"`
	// Restart discards what the board holds of an earlier push.
	Restart bool `json:"restart,omitempty"`
	// Parents creates missing parent directories (0755).
	Parents bool `json:"parents,omitempty"`
}

// FilePushResult answers file.push: send the bytes from Offset on. When
// Offset is not 0, OffsetSHA256 is the sha256 of the first Offset bytes
// the board holds: the caller checks it against its own file and, if they
// differ, pushes again with Restart.
type FilePushResult struct {
	ID           string `json:"id"`
	Offset       int64  `json:"offset"`
	OffsetSHA256 string `json:"offset_sha256,omitempty"`
	// Frame is the largest DATA payload the agent takes in one frame on
	// the push's stream (CapFrames; absent from older agents: the
	// default).
	Frame int `json:"frame,omitempty"`
}

// FilePullParams starts a pull of Path; the agent writes the bytes from
// Offset on into Stream (opened by the caller), then FIN. To resume, the
// caller names the bytes it holds: Offset and their sha256. If the board's
// file does not begin with them, the pull starts at 0 instead.
type FilePullParams struct {
	Path         string `json:"path" validate:"required,max=4096,boardpath"`
	Offset       int64  `json:"offset,omitempty" validate:"min=0"`
	OffsetSHA256 string `json:"offset_sha256,omitempty" validate:"required_unless=Offset 0,omitempty,len=64,hexadecimal,lowercase"`
	Stream       uint32 `json:"stream" validate:"required"`
	// Frame is the largest DATA payload the caller takes in one frame;
	// 0 keeps the agent's default. Only to an agent that announced
	// CapFrames, which sends frames of up to min(Frame, MaxBulkFrame).
	Frame int `json:"frame,omitempty" validate:"omitempty,min=1,max=262144"`
}

// FilePullResult answers file.pull before the data flows.
type FilePullResult struct {
	ID      string    `json:"id"`
	Size    int64     `json:"size"`
	Offset  int64     `json:"offset"` // where the data starts: the asked offset, or 0
	Mode    uint32    `json:"mode"`
	ModTime time.Time `json:"mtime"`
}

// FileWaitParams waits for a push or pull started on this connection.
type FileWaitParams struct {
	ID string `json:"id" validate:"required,max=64"`
}

// FileResult is the outcome of a push, pull or download. Bytes counts what
// crossed the link (or the network, for a download); a resumed transfer
// moves Size minus Offset.
type FileResult struct {
	Path       string    `json:"path"`
	Size       int64     `json:"size"`
	SHA256     string    `json:"sha256"`
	Offset     int64     `json:"offset,omitempty"`
	Bytes      int64     `json:"bytes"`
	Mode       uint32    `json:"mode,omitempty"`
	ModTime    time.Time `json:"mtime,omitzero"`
	DurationMs float64   `json:"duration_ms"`
}

// FileDownloadParams makes the agent fetch URL (http or https) itself into
// Path, or with Extract unpack the tarball (tar, tar.gz, tar.bz2) into the
// directory Path. SHA256 is required: nothing reaches Path unless the
// fetched bytes match it, and no download happens when Path or the agent's
// package cache already holds them.
//
// Size, MaxSize and TimeoutMs bound the download beside the agent's own
// limits (the smaller applies): content announced or found to be larger
// than MaxSize, or of another size than Size, is refused at once
// (invalid_params naming the field; "url" for the agent's limit), and the
// whole request, retries included, ends with reason timeout after
// TimeoutMs.
type FileDownloadParams struct {
	URL     string `json:"url" validate:"required,max=8192,url,startswith=http"`
	Path    string `json:"path" validate:"required,max=4096,boardpath"`
	SHA256  string `json:"sha256" validate:"required,len=64,hexadecimal,lowercase"`
	Extract bool   `json:"extract,omitempty"`
	Mode    uint32 `json:"mode,omitempty" validate:"max=4095"`
	Parents bool   `json:"parents,omitempty"`
	// Size is the content's size in bytes, when the caller knows it; it
	// also lets the agent check free space before the first request.
	Size int64 `json:"size,omitempty" validate:"min=0"`
	// MaxSize bounds the content's size in bytes (0: the agent's limit).
	MaxSize int64 `json:"max_size,omitempty" validate:"min=0"`
	// TimeoutMs bounds the whole request (0: the agent's deadline).
	TimeoutMs int64 `json:"timeout_ms,omitempty" validate:"min=0"`
	// Progress, when set, is echoed in the progress notifications the
	// agent sends while the download runs.
	Progress string `json:"progress,omitempty" validate:"max=64"`
}

// DownloadResult is the outcome of file.download. Skipped means nothing
// was fetched: Source says where the content came from ("destination" or
// "cache"); otherwise Source is "network".
type DownloadResult struct {
	FileResult
	Skipped   bool   `json:"skipped"`
	Source    string `json:"source"`
	Attempts  int    `json:"attempts"`
	Resumes   int    `json:"resumes"`
	Extracted int    `json:"extracted,omitempty"` // entries written by Extract
}

// Progress is the params of a progress notification.
type Progress struct {
	Token string `json:"token"`
	Phase string `json:"phase"` // e.g. "download", "retry", "verify", "extract"
	Bytes int64  `json:"bytes"`
	Total int64  `json:"total"` // 0 when unknown
}

// RebootParams asks the agent to reboot the board.
type RebootParams struct{}

// RebootResult answers system.reboot before the agent stops: BootID is the
// boot that is ending, so a caller knows the board is back when it reports
// a different one.
type RebootResult struct {
	BootID   string `json:"boot_id"`
	Commands int    `json:"commands"` // running commands that will be ended
}
