package main

import (
	"context"
	"fmt"

	"github.com/spf13/pflag"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

// Only the controllers the product relies on: ownerReference garbage
// collection, namespace cleanup, each namespace's default ServiceAccount
// and its tokens, and the kube-root-ca.crt ConfigMap Pods mount.
const controllers = "garbagecollector,namespace,serviceaccount," +
	"serviceaccount-token,root-ca-cert-publisher"

// runControllerManager starts kube-controller-manager under its own
// client certificate; each controller acts as its own service account
// (--use-service-account-credentials), as in a kubeadm cluster, so RBAC
// is exercised as it is there. Without leader election and serving: one
// instance, nothing to scrape.
func runControllerManager(ctx context.Context, p *pki, done chan<- error) error {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	all, off, aliases := kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases()
	named := s.Flags(all, off, aliases)
	s.ParsedFlags = &named
	if err := parse("kube-controller-manager", named.FlagSets, []string{
		"--kubeconfig=" + p.path("controller-manager.kubeconfig"),
		"--controllers=" + controllers,
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + p.path("sa.key"),
		"--root-ca-file=" + p.path("ca.crt"),
		"--leader-elect=false",
		"--secure-port=0",
	}); err != nil {
		return err
	}
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	c, err := s.Config(ctx, all, off, aliases)
	if err != nil {
		return fmt.Errorf("kube-controller-manager: %w", err)
	}
	go func() { done <- kcm.Run(ctx, c.Complete()) }()
	return nil
}

// runScheduler starts kube-scheduler with its default profile, under its
// own client certificate.
func runScheduler(ctx context.Context, p *pki, done chan<- error) error {
	o := scheduleroptions.NewOptions()
	named := o.Flags
	if named == nil {
		return fmt.Errorf("kube-scheduler: no flags")
	}
	if err := parse("kube-scheduler", named.FlagSets, []string{
		"--kubeconfig=" + p.path("scheduler.kubeconfig"),
		"--leader-elect=false",
		"--secure-port=0",
	}); err != nil {
		return err
	}
	cc, sched, err := scheduler.Setup(ctx, o)
	if err != nil {
		return fmt.Errorf("kube-scheduler: %w", err)
	}
	go func() { done <- scheduler.Run(ctx, cc, sched) }()
	return nil
}

func parse(name string, sets map[string]*pflag.FlagSet, args []string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	for _, f := range sets {
		fs.AddFlagSet(f)
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
