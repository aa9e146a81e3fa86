//go:build !linux

package main

import "time"

// fdWait sleeps until end: timerfd is Linux's.
func fdWait(end time.Time) { time.Sleep(time.Until(end)) }
