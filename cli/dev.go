package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/spf13/cobra"
)

// newDevCommand wraps devcluster's scripts: `ambit dev up|down|status` is
// the same as `make devcluster-up|down|status` in an ambit checkout.
func newDevCommand() *cobra.Command {
	var repo string
	dev := &cobra.Command{
		Use:   "dev",
		Short: "Run a local Kubernetes cluster (devcluster) for trying ambit",
	}
	dev.PersistentFlags().StringVar(&repo, "repo", "", "ambit checkout holding devcluster/ (default: found from the working directory upwards)")
	for _, sub := range []struct{ name, script, short string }{
		{"up", "up.sh", "Build (cached) and start the cluster; prints its KUBECONFIG"},
		{"down", "down.sh", "Stop every devcluster process and remove its network state"},
	} {
		dev.AddCommand(&cobra.Command{
			Use:   sub.name,
			Short: sub.short,
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				script, err := devclusterScript(repo, sub.script)
				if err != nil {
					return err
				}
				c := exec.CommandContext(cmd.Context(), script)
				c.Stdin, c.Stdout, c.Stderr = os.Stdin, cmd.OutOrStdout(), cmd.ErrOrStderr()
				if err := c.Run(); err != nil {
					return fmt.Errorf("devcluster %s: %w", sub.name, err)
				}
				return nil
			},
		})
	}
	return dev
}

// devclusterScript finds devcluster/scripts/<name> under repo, or in the
// working directory or one of its parents.
func devclusterScript(repo, name string) (string, error) {
	rel := filepath.Join("devcluster", "scripts", name)
	if repo != "" {
		p := filepath.Join(repo, rel)
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("--repo %s is not an ambit checkout: %w", repo, err)
		}
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no devcluster/ found here or above: run inside an ambit checkout or pass --repo")
		}
		dir = parent
	}
}
