// admpff native runtime: person-crop embeddings and gallery matching, with the Python runtime's numbers.
#pragma once

#include "admpff/contract.hpp"
#include "admpff/embedder.hpp"
#include "admpff/engine_sidecar.hpp"
#include "admpff/error.hpp"
#include "admpff/gallery.hpp"
#include "admpff/npy.hpp"
#include "admpff/files.hpp"
#include "admpff/preprocess.hpp"
