// Everything a C++ user of hive_gpu needs: contexts, storages, engines, errors.
#pragma once

#include "hive_gpu/backends.hpp"
#include "hive_gpu/config.hpp"
#include "hive_gpu/context.hpp"
#include "hive_gpu/engine.hpp"
#include "hive_gpu/error.hpp"
#include "hive_gpu/storage.hpp"
#include "hive_gpu/types.hpp"
