// Command release writes Beam's release artifacts from binaries that
// `make` cross-compiled: Linux packages, npm packages and checksums.
//
//	go run ./tools/release packages -version V -bin-dir DIR -out DIR   beam_V_ARCH.deb and .rpm for linux amd64 and arm64
//	    [-arch A,B] [-format deb,rpm] [-binary PATH]                   (some of them; -binary for one -arch)
//	go run ./tools/release npm -version V -bin-dir DIR -out DIR        the npm launcher and one package per platform
//	go run ./tools/release sums DIR                                    DIR/SHA256SUMS
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"beam.dev/beam/internal/release"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("usage: release packages|npm|sums ...")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	version := fs.String("version", "", "Beam's version (git describe)")
	binDir := fs.String("bin-dir", "bin/dist", "directory of the release binaries (beam-GOOS-GOARCH)")
	out := fs.String("out", "bin/dist", "output directory")
	configs := fs.String("configs", "configs", "the repository's configs directory")
	launcher := fs.String("launcher", "npm/beam", "the npm launcher package")
	archs := fs.String("arch", "amd64,arm64", "packages: the GOARCHes to package")
	formats := fs.String("format", "deb,rpm", "packages: the package formats")
	binary := fs.String("binary", "", "packages: the beam binary (one -arch) instead of BIN-DIR/beam-linux-ARCH")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "packages":
		as := strings.Split(*archs, ",")
		if *binary != "" && len(as) != 1 {
			return fmt.Errorf("-binary goes with one -arch, not %q", *archs)
		}
		for _, arch := range as {
			bin := *binary
			if bin == "" {
				bin = filepath.Join(*binDir, release.Platform{GOOS: "linux", GOARCH: arch}.BinaryName())
			}
			for _, format := range strings.Split(*formats, ",") {
				p, err := release.BuildPackage(release.PackageOptions{
					Binary: bin, Configs: *configs, Version: *version, Arch: arch, Format: format, OutDir: *out,
				})
				if err != nil {
					return err
				}
				fmt.Println(p)
			}
		}
	case "npm":
		dirs, err := release.WriteNPM(release.NPMOptions{Launcher: *launcher, Binaries: *binDir, Version: *version, OutDir: *out})
		if err != nil {
			return err
		}
		for _, d := range dirs {
			fmt.Println(d)
		}
	case "sums":
		if fs.NArg() != 1 {
			return fmt.Errorf("usage: release sums DIR")
		}
		sums, err := release.WriteSums(fs.Arg(0))
		if err != nil {
			return err
		}
		fmt.Print(sums)
	default:
		return fmt.Errorf("unknown command %q: want packages, npm or sums", args[0])
	}
	return nil
}
