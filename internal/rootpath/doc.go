// Package rootpath is what the agent's file methods and its downloader
// share about paths inside a file root (an os.Root).
//
// It turns the errors of file operations into protocol errors, one mapping
// for both: a missing path is not_found; a way out of the root (through a
// symlink or "..") and every other failure the request's path causes (a
// name too long, a path through a file or a symlink loop, a file where a
// directory must be, ...) is invalid params on "path", never followed; a
// full disk is no_space; anything else is internal. It checks free space
// before a large write, makes a destination's parent directory (or says
// why it cannot), and makes a rename durable.
package rootpath
