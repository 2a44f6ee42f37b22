// Package consolelog keeps a board's console text on disk, continuously
// and bounded, so that what a board printed between a reset and the next
// command is never lost, and a span of it (a lease's, the last five
// minutes) can be read back.
//
// A Log is a directory of two segment files, current.log and
// previous.log. Each line is stored as one record stamped with the time
// its first byte arrived:
//
//	2026-12-02T05:41:21.123456789Z|text of a whole line
//	2026-12-02T05:41:21.200000000Z+the start of a line still being written
//
// "|" ends a line, "+" marks a piece continued by the next record (a
// line that arrived in several writes, or longer than a record). When
// current.log would grow past Options.SegmentBytes it becomes
// previous.log (the older one is removed), so the log never holds much
// more than twice that. Reopening a Log appends to it: the record
// survives a restart of the service, and a record torn by a crash is
// closed on open.
//
// A Set is the logs of many boards under one directory, one
// subdirectory per board, named safely whatever the board's id.
package consolelog
