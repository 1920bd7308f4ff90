//go:build race

package bind

const raceEnabled = true
