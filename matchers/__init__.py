"""Trail matching over compiled artifacts: IP/CIDR/IP:port, domains, URLs, user agents, certificates.

Owns match semantics and returns trail ids; `TrailMatchers` bundles one matcher per indicator
kind over one loaded artifact. `TrailMatchers.load` uses the fast structures (C tables and
roaring bitmaps read in place); `TrailMatchers.reference` builds the plain-Python reference
matchers from the same artifact's trail table, for differential tests.

Must not know about packets, protocols or files other than the artifact it is handed.
"""

from __future__ import annotations

from matchers.artifact import Artifact, ArtifactError, TrailRecord  # noqa: F401 (re-exported)


class TrailMatchers:
    def __init__(self, artifact, ips, domains, urls, user_agents, certs=None):
        self.artifact = artifact
        self.ips = ips
        self.domains = domains
        self.urls = urls
        self.user_agents = user_agents
        if certs is None:
            from matchers.certs import ReferenceCertMatcher
            certs = ReferenceCertMatcher(())
        self.certs = certs

    @property
    def generation(self) -> int:
        return self.artifact.generation

    @classmethod
    def load(cls, artifact: Artifact) -> "TrailMatchers":
        from matchers.domains import load_domain_matcher
        from matchers.ips import IPMatcher
        from matchers.urls import load_url_matcher
        from matchers.certs import CertMatcher
        from matchers.useragents import load_ua_matcher
        return cls(artifact, IPMatcher(artifact), load_domain_matcher(artifact),
                   load_url_matcher(artifact), load_ua_matcher(artifact), CertMatcher(artifact))

    @classmethod
    def reference(cls, artifact: Artifact) -> "TrailMatchers":
        from matchers.domains import reference_domain_matcher
        from matchers.ips import ReferenceIPMatcher
        from matchers.urls import reference_url_matcher
        from matchers.certs import ReferenceCertMatcher
        from matchers.useragents import reference_ua_matcher
        trails = [(i, artifact.kind(i), artifact.key(i)) for i in range(artifact.trail_count)]
        return cls(artifact, ReferenceIPMatcher(trails), reference_domain_matcher(trails, artifact.meta_of),
                   reference_url_matcher(trails), reference_ua_matcher(trails), ReferenceCertMatcher(trails))
