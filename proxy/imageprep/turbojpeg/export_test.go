package turbojpeg

// ReachesEOI exports reachesEOI to the tests.
var ReachesEOI = reachesEOI
