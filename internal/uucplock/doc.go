// Package uucplock reads and takes the uucp lock files of serial lines
// (LCK..ttyUSB0 in /run/lock or /var/lock, HDB form), which minicom,
// picocom, screen and ModemManager honour: the serial probe stays off a
// locked port, and a line's mux takes the lock so others see it in use.
package uucplock
