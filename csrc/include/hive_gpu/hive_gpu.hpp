// Everything a C++ user of hive_gpu needs: contexts, storages, filters, errors. Backend
// authors include hive_gpu/engine.hpp (the engine contract) and hive_gpu/backends.hpp (the
// registry) by name.
#pragma once

#include "hive_gpu/config.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/error.hpp"
#include "hive_gpu/filter.hpp"
#include "hive_gpu/limits.hpp"
#include "hive_gpu/storage.hpp"
#include "hive_gpu/types.hpp"
