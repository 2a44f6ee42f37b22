// Package benchkit holds the helpers that the benchmark programs under
// bench/ share: byte-count flags and the formatting of sizes and times, a
// free loopback port, files of random bytes, copies, hashes and fsyncs of
// files, the removal of a transfer's target with boardlink's partial
// files, medians, a private sshd on 127.0.0.1 for the ssh and scp peers,
// and the signal handling and exit status around a program's run.
//
// The programs' flags and output are made of these helpers, so a change
// here changes every program that uses the helper: a helper whose
// behaviour one program needs different gets a second variant (Size and
// IntSize, WriteRandom and WriteRandomSum) rather than a changed one.
// What only one program needs stays in that program.
package benchkit
