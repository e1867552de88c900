package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// pki is the harness's certificate authority: one CA signs the API
// server's serving certificate and every client certificate, so one
// --client-ca-file authenticates them all.
type pki struct {
	dir    string
	caCert *x509.Certificate
	caKey  crypto.Signer
}

// The names a client may dial the API server by; 10.96.0.1 is the
// "kubernetes" Service's ClusterIP in --service-cluster-ip-range.
var servingNames = []string{"localhost", "kubernetes", "kubernetes.default",
	"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
var servingIPs = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")}

func newPKI(dir string) (*pki, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "llmsafespace-test-ca"},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	p := &pki{dir: dir, caKey: key}
	if p.caCert, err = p.sign(tmpl, key.Public(), nil); err != nil {
		return nil, err
	}
	return p, p.write("ca", p.caCert, key)
}

// sign signs tmpl with the CA (itself when parent is nil).
func (p *pki) sign(tmpl *x509.Certificate, pub crypto.PublicKey,
	parent *x509.Certificate) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(365 * 24 * time.Hour)
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, p.caKey)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// issue writes name.crt and name.key: a serving certificate when names or
// ips are given, else a client certificate for user cn in groups orgs.
func (p *pki) issue(name, cn string, orgs, names []string, ips []net.IP) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	usage := x509.ExtKeyUsageClientAuth
	if len(names)+len(ips) > 0 {
		usage = x509.ExtKeyUsageServerAuth
	}
	cert, err := p.sign(&x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		DNSNames:    names,
		IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}, key.Public(), p.caCert)
	if err != nil {
		return err
	}
	return p.write(name, cert, key)
}

func (p *pki) write(name string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	if err := writePEM(p.path(name+".crt"), "CERTIFICATE", cert.Raw, 0o644); err != nil {
		return err
	}
	return writeKey(p.path(name+".key"), key)
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// serviceAccountKey writes the key pair the API server signs and verifies
// service account tokens with (sa.key, sa.pub).
func (p *pki) serviceAccountKey() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	if err := writePEM(p.path("sa.pub"), "PUBLIC KEY", pub, 0o644); err != nil {
		return err
	}
	return writeKey(p.path("sa.key"), key)
}

// kubeconfig writes name.kubeconfig for the client certificate name.
func (p *pki) kubeconfig(file, name, server string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["llmsafespace-test"] = &clientcmdapi.Cluster{
		Server:               server,
		CertificateAuthority: p.path("ca.crt"),
	}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{
		ClientCertificate: p.path(name + ".crt"),
		ClientKey:         p.path(name + ".key"),
	}
	cfg.Contexts[name] = &clientcmdapi.Context{
		Cluster:   "llmsafespace-test",
		AuthInfo:  name,
		Namespace: "default",
	}
	cfg.CurrentContext = name
	return clientcmd.WriteToFile(*cfg, p.path(file))
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, kind string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
