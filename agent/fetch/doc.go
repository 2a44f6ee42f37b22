// Package fetch is the agent-side downloader behind file.download: it
// fetches an http(s) URL into a path under a file root (an *os.Root, so no
// write can leave it through a symlink), and nothing reaches that path
// unless the bytes match the sha256 the caller named. Transient failures
// (refused or reset connections, bodies cut short or stalled, HTTP 408, 429
// and 5xx) are retried with exponential backoff and resumed with HTTP Range
// requests; verified content lands in a content-addressed package cache
// (least recently used blobs evicted beyond a byte budget), so a second
// download of the same hash, or one whose destination already holds it, is
// answered without the network. With Extract, the content is a tarball
// (plain, gzip or bzip2, sniffed from its bytes) unpacked into a fresh
// directory that then replaces the destination; an archive with any entry
// that would land outside it (an absolute name, "..", or a symlink or hard
// link leading out) is refused as a whole.
//
// Every download is bounded (Limits, and the caller's Size, MaxSize and
// Timeout; the smaller applies): a body announced or found to be beyond
// the size, or of another size than expected, stops at once and its
// partial is removed (a partial cut by the network stays for a resume);
// free space is checked before writing once the size is known; an archive
// is refused when it unpacks to more bytes or entries than allowed, and
// its files are written sparse; an overall deadline covers the whole
// download, retries included.
package fetch
