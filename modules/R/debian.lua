-- Debian's R with IRkernel (apt-get install r-base-core r-cran-irkernel), as a module.
-- On a cluster, the site's own R modules take its place (see hubstock.toml [modules] use).
whatis("R from Debian's r-base-core, with IRkernel (r-cran-irkernel)")
help([[Debian's R (/usr/bin/R) with the IRkernel package, for the stock R kernel.]])
if not isFile("/usr/bin/R") then
  LmodError("Debian's R is not installed here: apt-get install --no-install-recommends r-base-core r-cran-irkernel")
end
setenv("R_LIBS_SITE", "/usr/lib/R/site-library:/usr/lib/R/library")
